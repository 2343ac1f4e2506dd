package integration

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type versionJSON struct {
	Name          string `json:"name"`
	Path          string `json:"path"`
	ID            string `json:"id"`
	UniqueID      string `json:"uniqueId"`
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
	SourceKind    string `json:"sourceKind"`
	Encryption    struct {
		Type                string `json:"type"`
		DiskEncryptionSetID string `json:"diskEncryptionSetId"`
	} `json:"encryption"`
	KeyID         string `json:"keyId"`
	StoragePrefix string `json:"storagePrefix"`
	ADE           bool   `json:"ade"`
}

// TestHostGalleryImageVersions: versions made from an image, a snapshot and
// a disk, each a copy under its own data key (customer or platform), are
// listed under their definition and become disks with the source's data,
// also once their source is gone; rotation re-wraps the customer-key
// version with the set's other resources, and the old key version is then
// not needed; a version keeps the image rules (guest-encrypted content
// stays flagged and gets no customer key; a customer-key version does not
// move to another subscription).
func TestHostGalleryImageVersions(t *testing.T) {
	h := newHost(t, startKeystore(t))
	kid, _ := cmkVM(t, h) // vault1, des1 granted, c1 on running vm1
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "d1")
	sum := writePattern(t, h.img("vm1", "data-1.img"))
	h.ok("snapshot", "create", "--name", "s1", "--source", "d1")
	h.ok("image", "create", "--name", "img1", "--source", "s1")

	var g struct {
		ID               string   `json:"id"`
		ImageDefinitions []string `json:"imageDefinitions"`
	}
	h.json(&g, "gallery", "create", "--name", "g1")
	assert.Contains(t, g.ID, "/providers/Microsoft.Compute/galleries/g1")
	h.ok("gallery", "image-definition", "create", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--publisher", "contoso", "--offer", "web", "--sku", "22")
	h.mustRefuse(t, []string{"MAJOR.MINOR.PATCH"}, "gallery", "image-version", "create", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "v1", "--source", "img1")
	mkVersion := func(version, src string, extra ...string) versionJSON {
		t.Helper()
		var v versionJSON
		h.json(&v, append([]string{"gallery", "image-version", "create", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", version, "--source", src}, extra...)...)
		return v
	}

	// From the image, under the set's key.
	v100 := mkVersion("1.0.0", "img1", "--disk-encryption-set", "des1")
	assert.Equal(t, "g1/def1/1.0.0", v100.Path)
	assert.Contains(t, v100.ID, "/galleries/g1/images/def1/versions/1.0.0")
	assert.Equal(t, "image", v100.SourceKind)
	assert.Equal(t, "EncryptionAtRestWithCustomerKey", v100.Encryption.Type)
	assert.Equal(t, kid, v100.KeyID)
	// From the snapshot, under a platform key.
	v101 := mkVersion("1.0.1", "s1")
	assert.Equal(t, "EncryptionAtRestWithPlatformKey", v101.Encryption.Type)
	// From the disk: only while no VM runs it.
	h.mustRefuse(t, []string{"in use by running VM", "snapshot"}, "gallery", "image-version", "create", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "1.0.2", "--source", "d1")
	h.ok("vm", "deallocate", "--name", "vm1")
	v102 := mkVersion("1.0.2", "d1")
	assert.Equal(t, "disk", v102.SourceKind)
	var im struct {
		StoragePrefix string `json:"storagePrefix"`
	}
	h.json(&im, "image", "show", "--name", "img1")
	prefixes := map[string]bool{im.StoragePrefix: true, v100.StoragePrefix: true, v101.StoragePrefix: true, v102.StoragePrefix: true}
	assert.Len(t, prefixes, 4, "every version is a copy of its own")

	var list []versionJSON
	h.json(&list, "gallery", "image-version", "list", "--gallery-name", "g1", "--gallery-image-definition", "def1")
	require.Len(t, list, 3)
	assert.Equal(t, []string{"1.0.0", "1.0.1", "1.0.2"}, []string{list[0].Name, list[1].Name, list[2].Name})
	var def struct {
		Versions []string `json:"versions"`
	}
	h.json(&def, "gallery", "image-definition", "show", "--gallery-name", "g1", "--gallery-image-definition", "def1")
	assert.Equal(t, []string{"1.0.0", "1.0.1", "1.0.2"}, def.Versions)
	h.json(&g, "gallery", "show", "--name", "g1")
	assert.Equal(t, []string{"def1"}, g.ImageDefinitions)

	// The source image goes; its copies stay whole.
	h.ok("image", "delete", "--name", "img1")
	h.ok("disk", "create", "--name", "n100", "--source", "g1/def1/1.0.0")
	h.ok("disk", "create", "--name", "n101", "--source", v101.ID)
	h.ok("vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--data-disks", "n100,n101")
	require.Equal(t, sum, readBack(t, h.img("vm2", "data-0.img")), "the disk from 1.0.0 has the data")
	require.Equal(t, sum, readBack(t, h.img("vm2", "data-1.img")), "the disk from 1.0.1 has the data")

	// Rotation re-wraps the customer-key version; with the old key version
	// disabled, a disk is still made from it.
	newKid := h.kid("rotate", "--vault-name", "vault1", "--name", "k1")
	h.ok("des", "update", "--name", "des1", "--key-url", newKid)
	var v versionJSON
	h.json(&v, "gallery", "image-version", "show", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "1.0.0")
	assert.Equal(t, newKid, v.KeyID)
	oldVersion := kid[strings.LastIndex(kid, "/")+1:]
	h.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", oldVersion, "--enabled", "false")
	h.ok("disk", "create", "--name", "n100b", "--source", "g1/def1/1.0.0")
	h.ok("vm", "disk", "attach", "--vm-name", "vm2", "--name", "n100b")
	require.Equal(t, sum, readBack(t, h.img("vm2", "data-2.img")))

	// Guest-encrypted content: no customer key for its version, and the
	// flag follows it into the version and the disks made from it.
	h.ok("disk", "create", "--name", "a1", "--size", "16M", "--ade", "true")
	h.mustRefuse(t, []string{"guest-level disk encryption (ADE)", "leave out --disk-encryption-set"},
		"gallery", "image-version", "create", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "2.0.0", "--source", "a1", "--disk-encryption-set", "des1")
	v200 := mkVersion("2.0.0", "a1")
	assert.True(t, v200.ADE)
	var d placedJSON
	h.ok("disk", "create", "--name", "fromade", "--source", "g1/def1/2.0.0")
	h.json(&d, "disk", "show", "--name", "fromade")
	assert.True(t, d.ADE)

	// Moves: another resource group takes the versions along; another
	// subscription is refused while a customer-key version is in it.
	const other = "11111111-2222-3333-4444-555555555555"
	h.ok("gallery", "move", "--name", "g1", "--resource-group", "rg2")
	h.json(&v, "gallery", "image-version", "show", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "1.0.1")
	assert.Equal(t, "rg2", v.ResourceGroup)
	assert.Contains(t, v.ID, "/resourceGroups/rg2/")
	h.mustRefuse(t, []string{"1.0.0", "customer-managed keys", "cannot move to another subscription"},
		"gallery", "move", "--name", "g1", "--resource-group", "rg3", "--subscription", other)
	h.json(&v, "gallery", "image-version", "show", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", "1.0.1")
	assert.Equal(t, "rg2", v.ResourceGroup, "the refusal moved nothing")

	// host gc knows the versions' objects for owned.
	out := h.ok("host", "gc", "--dry-run", "true")
	assert.NotContains(t, out, v101.StoragePrefix)

	// Deletion goes from the versions up; what a version held is gone.
	h.mustRefuse(t, []string{"def1"}, "gallery", "delete", "--name", "g1")
	h.mustRefuse(t, []string{"1.0.0"}, "gallery", "image-definition", "delete", "--gallery-name", "g1", "--gallery-image-definition", "def1")
	for _, ver := range []string{"1.0.0", "1.0.1", "1.0.2", "2.0.0"} {
		h.ok("gallery", "image-version", "delete", "--gallery-name", "g1", "--gallery-image-definition", "def1", "--gallery-image-version", ver)
	}
	h.ok("gallery", "image-definition", "delete", "--gallery-name", "g1", "--gallery-image-definition", "def1")
	h.ok("gallery", "delete", "--name", "g1")
	require.NoDirExists(t, h.storage+"/"+v100.StoragePrefix)
}
