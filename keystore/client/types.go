package client

import "time"

// Vault is a vault as the key store returns it.
type Vault struct {
	ID         string          `json:"id"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Location   string          `json:"location"`
	Properties VaultProperties `json:"properties"`
}

// VaultProperties are a vault's properties.
type VaultProperties struct {
	TenantID                  string         `json:"tenantId"`
	Sku                       Sku            `json:"sku"`
	AccessPolicies            []AccessPolicy `json:"accessPolicies"`
	EnableSoftDelete          bool           `json:"enableSoftDelete"`
	SoftDeleteRetentionInDays int            `json:"softDeleteRetentionInDays"`
	EnablePurgeProtection     bool           `json:"enablePurgeProtection"`
	AllowedTenants            []string       `json:"allowedTenants"`
	VaultURI                  string         `json:"vaultUri"`
}

// Sku is a vault's tier: standard or premium.
type Sku struct {
	Family string `json:"family,omitempty"`
	Name   string `json:"name"`
}

// AccessPolicy grants a principal key permissions.
type AccessPolicy struct {
	TenantID    string      `json:"tenantId"`
	ObjectID    string      `json:"objectId"`
	Permissions Permissions `json:"permissions"`
}

// Permissions by object kind.
type Permissions struct {
	Keys []string `json:"keys"`
}

// VaultCreate are the settings of a new vault.
type VaultCreate struct {
	Location   string `json:"location,omitempty"`
	Properties struct {
		Sku                       *Sku     `json:"sku,omitempty"`
		SoftDeleteRetentionInDays *int     `json:"softDeleteRetentionInDays,omitempty"`
		EnablePurgeProtection     *bool    `json:"enablePurgeProtection,omitempty"`
		AllowedTenants            []string `json:"allowedTenants,omitempty"`
	} `json:"properties"`
}

// VaultUpdate changes a vault; nil fields stay.
type VaultUpdate struct {
	Properties struct {
		EnablePurgeProtection *bool     `json:"enablePurgeProtection,omitempty"`
		AllowedTenants        *[]string `json:"allowedTenants,omitempty"`
	} `json:"properties"`
}

// JSONWebKey is a key in JWK form.
type JSONWebKey struct {
	Kid    string   `json:"kid,omitempty"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"key_ops,omitempty"`
	N      string   `json:"n,omitempty"`
	E      string   `json:"e,omitempty"`
	D      string   `json:"d,omitempty"`
	DP     string   `json:"dp,omitempty"`
	DQ     string   `json:"dq,omitempty"`
	QI     string   `json:"qi,omitempty"`
	P      string   `json:"p,omitempty"`
	Q      string   `json:"q,omitempty"`
	K      string   `json:"k,omitempty"`
}

// KeyAttributes of a key version; times are Unix seconds.
type KeyAttributes struct {
	Enabled         *bool  `json:"enabled,omitempty"`
	NBF             *int64 `json:"nbf,omitempty"`
	EXP             *int64 `json:"exp,omitempty"`
	Created         *int64 `json:"created,omitempty"`
	Updated         *int64 `json:"updated,omitempty"`
	RecoveryLevel   string `json:"recoveryLevel,omitempty"`
	RecoverableDays *int   `json:"recoverableDays,omitempty"`
}

// KeyBundle is a key version (public parts only).
type KeyBundle struct {
	Key                JSONWebKey        `json:"key"`
	Attributes         KeyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        *int64            `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *int64            `json:"scheduledPurgeDate,omitempty"`
}

// KeyItem is an entry of a listing.
type KeyItem struct {
	Kid                string            `json:"kid"`
	Attributes         KeyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        *int64            `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *int64            `json:"scheduledPurgeDate,omitempty"`
}

// KeyCreate are the settings of a new key.
type KeyCreate struct {
	Kty        string            `json:"kty"`
	KeySize    int               `json:"key_size,omitempty"`
	KeyOps     []string          `json:"key_ops,omitempty"`
	Attributes *KeyAttributes    `json:"attributes,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// KeyImport is a key to import with its private parts.
type KeyImport struct {
	Key        JSONWebKey        `json:"key"`
	HSM        *bool             `json:"hsm,omitempty"`
	Attributes *KeyAttributes    `json:"attributes,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// KeyUpdate changes a version; nil fields stay.
type KeyUpdate struct {
	KeyOps     []string          `json:"key_ops,omitempty"`
	Attributes *KeyAttributes    `json:"attributes,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// RotationPolicy of a key.
type RotationPolicy struct {
	ID              string                   `json:"id,omitempty"`
	LifetimeActions []LifetimeAction         `json:"lifetimeActions"`
	Attributes      RotationPolicyAttributes `json:"attributes"`
}

// LifetimeAction is a Rotate or Notify action with its trigger.
type LifetimeAction struct {
	Trigger Trigger `json:"trigger"`
	Action  Action  `json:"action"`
}

// Trigger is timeAfterCreate or timeBeforeExpiry (ISO-8601 durations).
type Trigger struct {
	TimeAfterCreate  string `json:"timeAfterCreate,omitempty"`
	TimeBeforeExpiry string `json:"timeBeforeExpiry,omitempty"`
}

// Action type: Rotate or Notify.
type Action struct {
	Type string `json:"type"`
}

// RotationPolicyAttributes carry expiryTime for new versions.
type RotationPolicyAttributes struct {
	ExpiryTime string `json:"expiryTime,omitempty"`
	Created    *int64 `json:"created,omitempty"`
	Updated    *int64 `json:"updated,omitempty"`
}

// Identity is a principal; Token is set only in CreateIdentity's answer.
type Identity struct {
	PrincipalID string    `json:"principalId"`
	TenantID    string    `json:"tenantId"`
	Type        string    `json:"type"`
	DisplayName string    `json:"displayName,omitempty"`
	Created     time.Time `json:"created"`
	Token       string    `json:"token,omitempty"`
}

// AuditRecord is one audit-log line.
type AuditRecord struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	OperationName  string    `json:"operationName"`
	CallerObjectID string    `json:"callerObjectId"`
	CallerTenantID string    `json:"callerTenantId"`
	CallerType     string    `json:"callerType"`
	Vault          string    `json:"vault,omitempty"`
	Kid            string    `json:"kid,omitempty"`
	ResultCode     int       `json:"resultCode"`
	ResultType     string    `json:"resultType"`
	ErrorCode      string    `json:"errorCode,omitempty"`
	RequestID      string    `json:"requestId"`
	DurationMs     float64   `json:"durationMs"`
	ClientIP       string    `json:"clientIp,omitempty"`
	// Count is how many requests a summary line stands for
	// (AuthenticationThrottled).
	Count int `json:"count,omitempty"`
	// RetainedFromSeq is, on an AuditRetention line, the first seq kept.
	RetainedFromSeq uint64 `json:"retainedFromSeq,omitempty"`
	Message         string `json:"message,omitempty"`
	// Hash chains the line to the one before it.
	Hash string `json:"hash,omitempty"`
}

// AuditQuery selects audit records.
type AuditQuery struct {
	After       uint64   // only records after this seq
	Vault       string   // only this vault's
	Limit       int      // the oldest Limit after After (0: the server's default, 1000)
	Last        int      // instead of Limit: the newest Last
	ExcludeOps  []string // leave out these operations
	HidePolling bool     // leave out the host's own event polling (successful EventsRead by the platform)
}

// AuditPage is an answer to AuditQuery.
type AuditPage struct {
	Value []AuditRecord `json:"value"`
	// HiddenPolling counts the host's polling lines left out.
	HiddenPolling int `json:"hiddenPolling"`
}

// AuditHead is the audit chain's head.
type AuditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Head string `json:"head"` // SEQ:HASH, what --since-head takes
}

// AuditVerification is the result of verifying the audit log's chain.
type AuditVerification struct {
	OK        bool          `json:"ok"`
	Files     []string      `json:"files"`
	Lines     int           `json:"lines"`
	FirstSeq  uint64        `json:"firstSeq,omitempty"`
	Head      string        `json:"head,omitempty"`
	Unchained int           `json:"unchainedLines,omitempty"`
	SinceHead string        `json:"sinceHead,omitempty"`
	Problem   *AuditProblem `json:"problem,omitempty"`
}

// AuditProblem is the first line found altered, removed or reordered.
type AuditProblem struct {
	Kind    string `json:"kind"`
	File    string `json:"file"`
	Line    int    `json:"line"`
	Seq     uint64 `json:"seq,omitempty"`
	Message string `json:"message"`
}

// Event is a key event (Event Grid shape) with its sequence number.
type Event struct {
	Sequence        uint64    `json:"sequence"`
	ID              string    `json:"id"`
	Topic           string    `json:"topic"`
	Subject         string    `json:"subject"`
	EventType       string    `json:"eventType"`
	EventTime       time.Time `json:"eventTime"`
	Data            EventData `json:"data"`
	DataVersion     string    `json:"dataVersion"`
	MetadataVersion string    `json:"metadataVersion"`
}

// EventData is Key Vault's event data.
type EventData struct {
	Id         string `json:"Id"`
	VaultName  string `json:"VaultName"`
	ObjectType string `json:"ObjectType"`
	ObjectName string `json:"ObjectName"`
	Version    string `json:"Version"`
	NBF        *int64 `json:"NBF"`
	EXP        *int64 `json:"EXP"`
}

// Webhook is a registered event receiver.
type Webhook struct {
	ID     string `json:"id"`
	URL    string `json:"url"`
	Vault  string `json:"vault,omitempty"`
	Cursor uint64 `json:"cursor"`
}
