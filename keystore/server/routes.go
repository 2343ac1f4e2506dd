package server

import (
	"net/http"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern, op string, f handlerFunc) { s.handle(mux, pattern, op, f) }

	h("GET /vaults", "VaultList", s.listVaults)
	h("PUT /vaults/{vault}", "VaultCreate", s.createVault)
	h("GET /vaults/{vault}", "VaultGet", s.getVault)
	h("PATCH /vaults/{vault}", "VaultUpdate", s.updateVault)
	h("PUT /vaults/{vault}/accessPolicies/{objectId}", "VaultAccessPolicyChange", s.setPolicy)
	h("DELETE /vaults/{vault}/accessPolicies/{objectId}", "VaultAccessPolicyChange", s.deletePolicy)

	h("GET /vaults/{vault}/keys", "KeyList", s.listKeys)
	h("POST /vaults/{vault}/keys/{name}/create", "KeyCreate", s.createKey)
	h("PUT /vaults/{vault}/keys/{name}", "KeyImport", s.importKey)
	h("GET /vaults/{vault}/keys/{name}", "KeyGet", s.getKey)
	h("GET /vaults/{vault}/keys/{name}/{version}", "KeyGet", s.getKey)
	h("GET /vaults/{vault}/keys/{name}/versions", "KeyListVersions", s.listVersions)
	h("PATCH /vaults/{vault}/keys/{name}", "KeyUpdate", s.updateKey)
	h("PATCH /vaults/{vault}/keys/{name}/{version}", "KeyUpdate", s.updateKey)
	h("DELETE /vaults/{vault}/keys/{name}", "KeyDelete", s.deleteKey)
	h("POST /vaults/{vault}/keys/{name}/rotate", "KeyRotate", s.rotateKey)
	h("GET /vaults/{vault}/keys/{name}/rotationpolicy", "KeyRotationPolicyGet", s.getRotationPolicy)
	h("PUT /vaults/{vault}/keys/{name}/rotationpolicy", "KeyRotationPolicyUpdate", s.setRotationPolicy)
	h("POST /vaults/{vault}/keys/{name}/backup", "KeyBackup", s.backupKey)
	h("POST /vaults/{vault}/keys/restore", "KeyRestore", s.restoreKey)
	h("POST /vaults/{vault}/keys/{name}/wrapkey", "KeyWrap", s.wrapKey)
	h("POST /vaults/{vault}/keys/{name}/{version}/wrapkey", "KeyWrap", s.wrapKey)
	h("POST /vaults/{vault}/keys/{name}/unwrapkey", "KeyUnwrap", s.unwrapKey)
	h("POST /vaults/{vault}/keys/{name}/{version}/unwrapkey", "KeyUnwrap", s.unwrapKey)

	h("GET /vaults/{vault}/deletedkeys", "KeyListDeleted", s.listDeletedKeys)
	h("GET /vaults/{vault}/deletedkeys/{name}", "KeyGetDeleted", s.getDeletedKey)
	h("POST /vaults/{vault}/deletedkeys/{name}/recover", "KeyRecover", s.recoverKey)
	h("DELETE /vaults/{vault}/deletedkeys/{name}", "KeyPurge", s.purgeKey)

	h("POST /identities", "IdentityCreate", s.createIdentity)
	h("GET /identities/{id}", "IdentityGet", s.getIdentity)
	h("DELETE /identities/{id}", "IdentityDelete", s.deleteIdentity)
	h("GET /recordkey", "RecordKeyGet", s.recordKey)

	h("GET /audit", "AuditRead", s.readAudit)
	h("GET /audit/head", "AuditHead", s.auditHead)
	h("GET /audit/verify", "AuditVerify", s.auditVerify)
	h("GET /events", "EventsRead", s.readEventsAPI)
	h("POST /webhooks", "WebhookCreate", s.createWebhook)
	h("GET /webhooks", "WebhookList", s.listWebhooks)
	h("DELETE /webhooks/{id}", "WebhookDelete", s.deleteWebhook)

	registerTestHooks(s, h)

	h("/", "Unknown", func(c *call) (any, error) {
		return nil, errf(http.StatusNotFound, "NotFound", "", "no operation %s %s; see the key store's API paths", c.r.Method, c.r.URL.Path)
	})
	return mux
}
