package control

import (
	"slices"
	"strings"

	"hostcrypt/control/api"
)

// checkName enforces Azure's rules for a managed resource's name, kept to what
// is also safe as a file name in the mount: 1-80 of letters, digits, '_', '-'
// and '.', starting with a letter or digit, not ending with '.'.
func checkName(kind, name string) error {
	if name == "" {
		return badRequest("a %s needs a name (--name)", kind)
	}
	if len(name) > 80 {
		return badRequest("%s name %q is longer than 80 characters", kind, name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && strings.ContainsRune("_-.", r))
		if !ok {
			return badRequest("%s name %q: use letters, digits, '_', '-' and '.', starting with a letter or digit", kind, name)
		}
	}
	if strings.HasSuffix(name, ".") {
		return badRequest("%s name %q must not end with '.'", kind, name)
	}
	return nil
}

func checkCaching(mode string) error {
	switch mode {
	case api.CacheNone, api.CacheReadOnly, api.CacheReadWrite:
		return nil
	}
	return badRequest("caching mode %q: use None, ReadOnly or ReadWrite", mode)
}

func checkSku(sku string) error {
	if slices.Contains(api.Skus, sku) {
		return nil
	}
	return badRequest("sku %q: use one of %s", sku, strings.Join(api.Skus, ", "))
}
