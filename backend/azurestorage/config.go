package azurestorage

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrBadConnectionString is wrapped by every ParseConnectionString error.
var ErrBadConnectionString = errors.New("bad azure storage connection string")

// DevStorageAccount and DevStorageKey are Azurite's well-known development
// account and key (public, documented by Microsoft; not a secret).
const (
	DevStorageAccount = "devstoreaccount1"
	DevStorageKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Config is a parsed connection string: one endpoint per service and one way
// to authenticate, shared by the queue, table and blob clients.
type Config struct {
	// AccountName is the storage account ("" for a SAS with explicit endpoints).
	AccountName string
	// BlobEndpoint, QueueEndpoint and TableEndpoint are service URLs without
	// a trailing slash or query.
	BlobEndpoint, QueueEndpoint, TableEndpoint string
	// AccountKey is the base64 shared key, when the string had one. Secret.
	AccountKey string
	// SAS is a shared access signature (query string without '?'). Secret.
	SAS string
	// UseDefaultCredential signs requests with azidentity.DefaultAzureCredential
	// (an account URL was given instead of a connection string).
	UseDefaultCredential bool
}

// String describes the configuration without secrets.
func (c Config) String() string {
	auth := "DefaultAzureCredential"
	switch {
	case c.AccountKey != "":
		auth = "account key"
	case c.SAS != "":
		auth = "SAS"
	}
	name := c.AccountName
	if name == "" {
		name = "(unnamed account)"
	}
	return fmt.Sprintf("azurestorage:%s (blob %s, queue %s, table %s; %s)", name, c.BlobEndpoint, c.QueueEndpoint, c.TableEndpoint, auth)
}

var knownKeys = map[string]bool{
	"usedevelopmentstorage": true, "developmentstorageproxyuri": true,
	"defaultendpointsprotocol": true, "accountname": true, "accountkey": true,
	"endpointsuffix": true, "sharedaccesssignature": true,
	"blobendpoint": true, "queueendpoint": true, "tableendpoint": true,
	"fileendpoint": true, "blobsecondaryendpoint": true, "queuesecondaryendpoint": true,
	"tablesecondaryendpoint": true, "filesecondaryendpoint": true,
}

// ParseConnectionString parses the forms Azure Storage tools accept:
//
//	UseDevelopmentStorage=true
//	DefaultEndpointsProtocol=https;AccountName=NAME;AccountKey=KEY[;EndpointSuffix=core.windows.net]
//	BlobEndpoint=URL;QueueEndpoint=URL;TableEndpoint=URL;SharedAccessSignature=SAS
//	AccountName=NAME;AccountKey=KEY;BlobEndpoint=URL;QueueEndpoint=URL;TableEndpoint=URL
//	https://NAME.blob.core.windows.net[/]   (an account URL: DefaultAzureCredential)
//
// Errors name the missing or malformed key but never echo a secret.
func ParseConnectionString(s string) (Config, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Config{}, fmt.Errorf("%w: it is empty", ErrBadConnectionString)
	}
	lc := strings.ToLower(s)
	if (strings.HasPrefix(lc, "https://") || strings.HasPrefix(lc, "http://")) && !strings.Contains(s, ";") {
		return parseAccountURL(s)
	}
	kv := map[string]string{}
	for i, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return Config{}, fmt.Errorf("%w: segment %d is not KEY=VALUE", ErrBadConnectionString, i+1)
		}
		key := strings.ToLower(strings.TrimSpace(k))
		if !knownKeys[key] {
			return Config{}, fmt.Errorf("%w: unknown key %q", ErrBadConnectionString, strings.TrimSpace(k))
		}
		if _, dup := kv[key]; dup {
			return Config{}, fmt.Errorf("%w: key %q appears twice", ErrBadConnectionString, strings.TrimSpace(k))
		}
		kv[key] = strings.TrimSpace(v)
	}
	if v, ok := kv["usedevelopmentstorage"]; ok {
		if !strings.EqualFold(v, "true") {
			return Config{}, fmt.Errorf("%w: UseDevelopmentStorage must be true", ErrBadConnectionString)
		}
		if len(kv) > 1 {
			return Config{}, fmt.Errorf("%w: UseDevelopmentStorage=true takes no other keys; give explicit endpoints and the devstoreaccount1 key for a non-default Azurite", ErrBadConnectionString)
		}
		return Config{
			AccountName:   DevStorageAccount,
			AccountKey:    DevStorageKey,
			BlobEndpoint:  "http://127.0.0.1:10000/" + DevStorageAccount,
			QueueEndpoint: "http://127.0.0.1:10001/" + DevStorageAccount,
			TableEndpoint: "http://127.0.0.1:10002/" + DevStorageAccount,
		}, nil
	}

	c := Config{AccountName: kv["accountname"], AccountKey: kv["accountkey"], SAS: strings.TrimPrefix(kv["sharedaccesssignature"], "?")}
	if c.AccountKey != "" && c.SAS != "" {
		return Config{}, fmt.Errorf("%w: give AccountKey or SharedAccessSignature, not both", ErrBadConnectionString)
	}
	if c.AccountKey == "" && c.SAS == "" {
		return Config{}, fmt.Errorf("%w: missing AccountKey or SharedAccessSignature", ErrBadConnectionString)
	}
	if c.AccountKey != "" {
		if c.AccountName == "" {
			return Config{}, fmt.Errorf("%w: AccountKey needs AccountName", ErrBadConnectionString)
		}
		if _, err := base64.StdEncoding.DecodeString(c.AccountKey); err != nil {
			return Config{}, fmt.Errorf("%w: AccountKey is not valid base64", ErrBadConnectionString)
		}
	}
	if c.SAS != "" {
		if _, err := url.ParseQuery(c.SAS); err != nil || !strings.Contains(c.SAS, "sig=") {
			return Config{}, fmt.Errorf("%w: SharedAccessSignature is not a SAS query string (no sig=)", ErrBadConnectionString)
		}
	}
	proto := strings.ToLower(kv["defaultendpointsprotocol"])
	if proto == "" {
		proto = "https"
	}
	if proto != "https" && proto != "http" {
		return Config{}, fmt.Errorf("%w: DefaultEndpointsProtocol must be http or https", ErrBadConnectionString)
	}
	suffix := kv["endpointsuffix"]
	if suffix == "" {
		suffix = "core.windows.net"
	}
	for _, svc := range []struct {
		key, name string
		dst       *string
	}{{"blobendpoint", "BlobEndpoint", &c.BlobEndpoint}, {"queueendpoint", "QueueEndpoint", &c.QueueEndpoint}, {"tableendpoint", "TableEndpoint", &c.TableEndpoint}} {
		if v := kv[svc.key]; v != "" {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return Config{}, fmt.Errorf("%w: %s is not an http(s) URL", ErrBadConnectionString, svc.name)
			}
			if u.RawQuery != "" {
				return Config{}, fmt.Errorf("%w: %s must not carry a query; put a SAS in SharedAccessSignature", ErrBadConnectionString, svc.name)
			}
			*svc.dst = strings.TrimRight(v, "/")
			continue
		}
		if c.AccountName == "" {
			return Config{}, fmt.Errorf("%w: missing %s (or AccountName to derive it)", ErrBadConnectionString, svc.name)
		}
		*svc.dst = fmt.Sprintf("%s://%s.%s.%s", proto, c.AccountName, strings.TrimSuffix(svc.key, "endpoint"), suffix)
	}
	return c, nil
}

// parseAccountURL accepts https://NAME.blob.core.windows.net (or the queue or
// table host) and derives the other two services' URLs.
func parseAccountURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return Config{}, fmt.Errorf("%w: account URL is not a URL", ErrBadConnectionString)
	}
	if u.RawQuery != "" {
		return Config{}, fmt.Errorf("%w: account URL must not carry a query (a SAS goes in a connection string's SharedAccessSignature)", ErrBadConnectionString)
	}
	if strings.Trim(u.Path, "/") != "" {
		return Config{}, fmt.Errorf("%w: account URL %s://%s must have no path", ErrBadConnectionString, u.Scheme, u.Host)
	}
	host := strings.ToLower(u.Host)
	name, rest, ok := strings.Cut(host, ".")
	svc, suffix, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || (svc != "blob" && svc != "queue" && svc != "table") {
		return Config{}, fmt.Errorf("%w: account URL host %q is not ACCOUNT.blob|queue|table.SUFFIX", ErrBadConnectionString, u.Host)
	}
	mk := func(service string) string { return fmt.Sprintf("%s://%s.%s.%s", u.Scheme, name, service, suffix) }
	return Config{AccountName: name, BlobEndpoint: mk("blob"), QueueEndpoint: mk("queue"), TableEndpoint: mk("table"), UseDefaultCredential: true}, nil
}
