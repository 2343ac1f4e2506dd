// Package api is the key store's wire format: the one set of request and
// answer types that keystored serves, its Go client sends and the host's key
// service reads, the error envelope, and the key id parser. It depends on
// the standard library only, so that every side of the wire can import it.
//
// Shapes follow Azure Key Vault's REST API (JSON Web Keys, attributes in Unix
// seconds, Event Grid events), so that a reader who knows Key Vault knows
// these; docs/KEYSTORE.md describes each route.
package api

import "time"

// Key wrap algorithms.
const (
	RSAOAEP256 = "RSA-OAEP-256"
	RSAOAEP    = "RSA-OAEP"
	// A256KWP is AES key wrap with padding, the algorithm of platform keys.
	A256KWP = "A256KWP"
)

// PlatformVault is the reserved vault holding the platform's AES keys; only
// the platform principal may use it.
const PlatformVault = "platform"

// Identity types a caller may create.
const (
	IdentitySystemAssigned = "SystemAssigned"
	// IdentityUserAssigned is a user-assigned managed identity, a resource
	// of the host that disk encryption sets share.
	IdentityUserAssigned = "UserAssigned"
	IdentityUser         = "User"
	// IdentityHost is a host's own identity: it uses no key itself, but
	// may act for the managed identities created for its host group
	// (IdentityCreate.HostGroup), by naming one in ActForHeader.
	IdentityHost = "Host"
)

// ActForHeader names, on a request of a host identity, the managed
// identity it acts for: the request is authorised as that identity, and
// the audit line names both (AuditRecord.Actor*).
const ActForHeader = "X-Hostcrypt-Act-For"

// RecordKey is the answer of GET /recordkey: the key a host group's hosts
// authenticate their shared records with, derived by the key store from
// its master key and the group's name, given only to the group's host
// identities.
type RecordKey struct {
	HostGroup string `json:"hostGroup"`
	Key       []byte `json:"key"`
}

// List is the answer of a listing: {"value":[…]}.
type List[T any] struct {
	Value []T `json:"value"`
}

// ErrorEnvelope is every refusal's body:
// {"error":{"code":…,"message":…,"innererror":{"code":…}}}.
type ErrorEnvelope struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the error of an ErrorEnvelope. InnerError narrows Code
// (Forbidden/ForbiddenByPolicy, Forbidden/KeyDisabled...).
type ErrorBody struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	InnerError *InnerError `json:"innererror,omitempty"`
}

// InnerError is the narrower code of an ErrorBody.
type InnerError struct {
	Code string `json:"code"`
}

// Vault is a vault as the API returns it (Azure Resource Manager shape).
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

// Sku is a vault's pricing tier: standard or premium (HSM keys).
type Sku struct {
	Family string `json:"family"`
	Name   string `json:"name"`
}

// AccessPolicy grants a principal permissions on a vault.
type AccessPolicy struct {
	TenantID    string      `json:"tenantId"`
	ObjectID    string      `json:"objectId"`
	Permissions Permissions `json:"permissions"`
}

// Permissions lists permissions by object kind; only keys exist here.
type Permissions struct {
	Keys []string `json:"keys"`
}

// VaultCreate is the body of PUT /vaults/{vault}. Absent (nil) settings take
// Key Vault's defaults.
type VaultCreate struct {
	Location   string                `json:"location,omitempty"`
	Properties VaultCreateProperties `json:"properties"`
}

// VaultCreateProperties are the settings of a new vault.
type VaultCreateProperties struct {
	Sku                       *Sku     `json:"sku,omitempty"`
	TenantID                  string   `json:"tenantId,omitempty"`
	EnableSoftDelete          *bool    `json:"enableSoftDelete,omitempty"`
	SoftDeleteRetentionInDays *int     `json:"softDeleteRetentionInDays,omitempty"`
	EnablePurgeProtection     *bool    `json:"enablePurgeProtection,omitempty"`
	AllowedTenants            []string `json:"allowedTenants,omitempty"`
}

// VaultUpdate is the body of PATCH /vaults/{vault}; nil fields stay.
type VaultUpdate struct {
	Properties VaultUpdateProperties `json:"properties"`
}

// VaultUpdateProperties are the settings a vault update may change.
type VaultUpdateProperties struct {
	EnablePurgeProtection *bool     `json:"enablePurgeProtection,omitempty"`
	AllowedTenants        *[]string `json:"allowedTenants,omitempty"`
}

// PolicySet is the body of PUT /vaults/{vault}/accessPolicies/{objectId}.
type PolicySet struct {
	TenantID    string      `json:"tenantId,omitempty"`
	Permissions Permissions `json:"permissions"`
}

// JSONWebKey is a key in JWK form. Answers carry public parts only; an
// import carries the private ones.
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

// KeyAttributes are a key version's attributes; times are Unix seconds.
type KeyAttributes struct {
	Enabled         *bool  `json:"enabled,omitempty"`
	NBF             *int64 `json:"nbf,omitempty"`
	EXP             *int64 `json:"exp,omitempty"`
	Created         *int64 `json:"created,omitempty"`
	Updated         *int64 `json:"updated,omitempty"`
	RecoveryLevel   string `json:"recoveryLevel,omitempty"`
	RecoverableDays *int   `json:"recoverableDays,omitempty"`
}

// KeyBundle is a key version as get, create and update return it; the
// deleted fields are set for soft-deleted keys.
type KeyBundle struct {
	Key                JSONWebKey        `json:"key"`
	Attributes         KeyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        *int64            `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *int64            `json:"scheduledPurgeDate,omitempty"`
}

// KeyItem is one entry of a key or version listing.
type KeyItem struct {
	Kid                string            `json:"kid"`
	Attributes         KeyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        *int64            `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *int64            `json:"scheduledPurgeDate,omitempty"`
}

// KeyCreate is the body of POST …/keys/{name}/create. KeySize nil takes the
// default of the key type; 0 is refused.
type KeyCreate struct {
	Kty            string            `json:"kty"`
	KeySize        *int              `json:"key_size,omitempty"`
	PublicExponent *int              `json:"public_exponent,omitempty"`
	KeyOps         []string          `json:"key_ops,omitempty"`
	Attributes     *KeyAttributes    `json:"attributes,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	Crv            string            `json:"crv,omitempty"`
}

// KeyImport is the body of PUT …/keys/{name}: a key with its private parts.
type KeyImport struct {
	Key        *JSONWebKey       `json:"key"`
	HSM        *bool             `json:"hsm,omitempty"`
	Attributes *KeyAttributes    `json:"attributes,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// KeyUpdate is the body of PATCH …/keys/{name}[/{version}]; nil fields stay.
type KeyUpdate struct {
	KeyOps     []string          `json:"key_ops,omitempty"`
	Attributes *KeyAttributes    `json:"attributes,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// KeyOperation is the body of wrapkey and unwrapkey: the algorithm and the
// input, base64url without padding.
type KeyOperation struct {
	Alg   string `json:"alg"`
	Value string `json:"value"`
}

// KeyOperationResult is their answer: the key id with the version actually
// used, and the output.
type KeyOperationResult struct {
	Kid   string `json:"kid"`
	Value string `json:"value"`
}

// Blob is an opaque value: a key backup, or the body of a restore.
type Blob struct {
	Value string `json:"value"`
}

// RotationPolicy is a key's rotation policy, as GET and PUT
// …/rotationpolicy carry it.
type RotationPolicy struct {
	ID              string                   `json:"id,omitempty"`
	LifetimeActions []LifetimeAction         `json:"lifetimeActions"`
	Attributes      RotationPolicyAttributes `json:"attributes"`
}

// RotationPolicyAttributes holds expiryTime, an ISO-8601 duration applied to
// new versions.
type RotationPolicyAttributes struct {
	ExpiryTime string `json:"expiryTime,omitempty"`
	Created    *int64 `json:"created,omitempty"`
	Updated    *int64 `json:"updated,omitempty"`
}

// LifetimeAction is one action of a rotation policy.
type LifetimeAction struct {
	Trigger Trigger `json:"trigger"`
	Action  Action  `json:"action"`
}

// Trigger says when an action runs: an ISO-8601 duration after the current
// version's creation, or before its expiry.
type Trigger struct {
	TimeAfterCreate  string `json:"timeAfterCreate,omitempty"`
	TimeBeforeExpiry string `json:"timeBeforeExpiry,omitempty"`
}

// Action is Rotate or Notify.
type Action struct {
	Type string `json:"type"`
}

// Identity is a principal; Token is set only in the answer that creates it.
type Identity struct {
	PrincipalID string `json:"principalId"`
	TenantID    string `json:"tenantId"`
	Type        string `json:"type"`
	DisplayName string `json:"displayName,omitempty"`
	// HostGroup is, on a host identity, the group it belongs to; on a
	// managed identity, the group whose hosts may act for it.
	HostGroup string    `json:"hostGroup,omitempty"`
	Created   time.Time `json:"created"`
	// Token is the bearer token, shown once at creation; a managed
	// identity created for a host group has none (its hosts act for it).
	Token string `json:"token,omitempty"`
}

// IdentityCreate is the body of POST /identities. Type is SystemAssigned
// (for a disk encryption set), UserAssigned (a managed identity of its own),
// User or Host; an empty TenantID is the caller's. HostGroup is required of
// a Host (which only an administrator creates), and makes a SystemAssigned
// or UserAssigned identity one that the group's hosts act for, with no
// token of its own.
type IdentityCreate struct {
	Type        string `json:"type"`
	TenantID    string `json:"tenantId"`
	DisplayName string `json:"displayName"`
	HostGroup   string `json:"hostGroup,omitempty"`
}

// AuditRecord is one line of the audit log: one request, allowed or denied,
// or a line the store writes itself (failed authentications summarised,
// retention). Its members are in the order the audit chain hashes them.
type AuditRecord struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	OperationName  string    `json:"operationName"`
	CallerObjectID string    `json:"callerObjectId"`
	CallerTenantID string    `json:"callerTenantId"`
	CallerType     string    `json:"callerType"`
	// ActorObjectID, ActorType and ActorName name the host identity that
	// acted for the caller (ActForHeader); empty when the caller acted
	// itself.
	ActorObjectID string  `json:"actorObjectId,omitempty"`
	ActorType     string  `json:"actorType,omitempty"`
	ActorName     string  `json:"actorName,omitempty"`
	Vault         string  `json:"vault,omitempty"`
	Kid           string  `json:"kid,omitempty"`
	ResultCode    int     `json:"resultCode"`
	ResultType    string  `json:"resultType"`
	ErrorCode     string  `json:"errorCode,omitempty"`
	RequestID     string  `json:"requestId"`
	DurationMs    float64 `json:"durationMs"`
	ClientIP      string  `json:"clientIp,omitempty"`
	// Count is how many requests a summary line stands for
	// (AuthenticationThrottled).
	Count int `json:"count,omitempty"`
	// RetainedFromSeq is, on an AuditRetention line, the first sequence
	// number kept.
	RetainedFromSeq uint64 `json:"retainedFromSeq,omitempty"`
	Message         string `json:"message,omitempty"`
	// Hash chains the line to the one before (package auditchain); it is
	// the line's last member.
	Hash string `json:"hash,omitempty"`
}

// AuditPage is the answer of GET /audit.
type AuditPage struct {
	Value []AuditRecord `json:"value"`
	// HiddenPolling counts the host's polling lines left out
	// (polling=false).
	HiddenPolling int `json:"hiddenPolling"`
}

// AuditHead is the audit chain's head, as GET /audit/head returns it.
type AuditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Head string `json:"head"` // SEQ:HASH, the form --since-head takes
}

// AuditVerification is the answer of GET /audit/verify.
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

// Event is a key event in Key Vault's Event Grid shape, with the store's
// sequence number for resuming a stream.
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

// EventData is the data of a Key Vault event.
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
	ID       string `json:"id"`
	URL      string `json:"url"`
	Vault    string `json:"vault,omitempty"`
	TenantID string `json:"tenantId"`
	Cursor   uint64 `json:"cursor"`
}

// WebhookCreate is the body of POST /webhooks.
type WebhookCreate struct {
	URL   string `json:"url"`
	Vault string `json:"vault,omitempty"`
}

// ClockAdvance is the body of POST /testhooks/clock, served only by a
// keystored built with -tags testhooks.
type ClockAdvance struct {
	Advance string `json:"advance"`
}
