package azurestorage

import (
	"errors"
	"strings"
	"testing"
)

const testKey = "a2V5a2V5a2V5a2V5" // base64, not a real key
const testSAS = "sv=2022-11-02&ss=bqt&sig=c2VjcmV0c2ln"

func TestParseConnectionString(t *testing.T) {
	cases := []struct {
		name, in string
		want     Config
	}{
		{"dev storage", "UseDevelopmentStorage=true", Config{AccountName: DevStorageAccount, AccountKey: DevStorageKey,
			BlobEndpoint: "http://127.0.0.1:10000/devstoreaccount1", QueueEndpoint: "http://127.0.0.1:10001/devstoreaccount1", TableEndpoint: "http://127.0.0.1:10002/devstoreaccount1"}},
		{"account key", "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + testKey + ";EndpointSuffix=core.windows.net",
			Config{AccountName: "acct", AccountKey: testKey, BlobEndpoint: "https://acct.blob.core.windows.net", QueueEndpoint: "https://acct.queue.core.windows.net", TableEndpoint: "https://acct.table.core.windows.net"}},
		{"key, sovereign suffix, case-insensitive keys", "accountname=acct;ACCOUNTKEY=" + testKey + ";endpointsuffix=core.chinacloudapi.cn",
			Config{AccountName: "acct", AccountKey: testKey, BlobEndpoint: "https://acct.blob.core.chinacloudapi.cn", QueueEndpoint: "https://acct.queue.core.chinacloudapi.cn", TableEndpoint: "https://acct.table.core.chinacloudapi.cn"}},
		{"sas with explicit endpoints", "BlobEndpoint=https://a.blob.core.windows.net/;QueueEndpoint=https://a.queue.core.windows.net;TableEndpoint=https://a.table.core.windows.net;SharedAccessSignature=?" + testSAS,
			Config{SAS: testSAS, BlobEndpoint: "https://a.blob.core.windows.net", QueueEndpoint: "https://a.queue.core.windows.net", TableEndpoint: "https://a.table.core.windows.net"}},
		{"azurite explicit endpoints", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + DevStorageKey + ";BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:2/devstoreaccount1;TableEndpoint=http://127.0.0.1:3/devstoreaccount1;",
			Config{AccountName: DevStorageAccount, AccountKey: DevStorageKey, BlobEndpoint: "http://127.0.0.1:1/devstoreaccount1", QueueEndpoint: "http://127.0.0.1:2/devstoreaccount1", TableEndpoint: "http://127.0.0.1:3/devstoreaccount1"}},
		{"account URL", "https://acct.blob.core.windows.net/", Config{AccountName: "acct", UseDefaultCredential: true,
			BlobEndpoint: "https://acct.blob.core.windows.net", QueueEndpoint: "https://acct.queue.core.windows.net", TableEndpoint: "https://acct.table.core.windows.net"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConnectionString(tc.in)
			if err != nil {
				t.Fatalf("ParseConnectionString: %v", err)
			}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			if s := got.String(); strings.Contains(s, testKey) || strings.Contains(s, "sig=") || strings.Contains(s, DevStorageKey) {
				t.Fatalf("String() leaks a secret: %s", s)
			}
		})
	}
}

func TestParseConnectionStringErrors(t *testing.T) {
	cases := []struct{ name, in, mention string }{
		{"empty", "  ", "empty"},
		{"no credentials", "AccountName=acct", "AccountKey or SharedAccessSignature"},
		{"key without name", "AccountKey=" + testKey + ";BlobEndpoint=https://x/;QueueEndpoint=https://y;TableEndpoint=https://z", "AccountName"},
		{"bad key", "AccountName=acct;AccountKey=not*base64!", "AccountKey is not valid base64"},
		{"missing endpoint", "BlobEndpoint=https://a.blob.core.windows.net;TableEndpoint=https://a.table.core.windows.net;SharedAccessSignature=" + testSAS, "QueueEndpoint"},
		{"bad endpoint", "AccountName=acct;AccountKey=" + testKey + ";QueueEndpoint=ftp://x", "QueueEndpoint"},
		{"sas without sig", "AccountName=acct;SharedAccessSignature=sv=2022", "SharedAccessSignature"},
		{"key and sas", "AccountName=acct;AccountKey=" + testKey + ";SharedAccessSignature=" + testSAS, "not both"},
		{"unknown key", "AccountName=acct;AccountKey=" + testKey + ";Colour=blue", `"Colour"`},
		{"no equals", "AccountName=acct;" + testKey, "segment 2"},
		{"bad protocol", "DefaultEndpointsProtocol=ftp;AccountName=acct;AccountKey=" + testKey, "DefaultEndpointsProtocol"},
		{"dev storage false", "UseDevelopmentStorage=false", "UseDevelopmentStorage"},
		{"account URL with SAS", "https://acct.blob.core.windows.net/?" + testSAS, "query"},
		{"account URL host", "https://example.com", "ACCOUNT.blob"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConnectionString(tc.in)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrBadConnectionString) {
				t.Errorf("error does not wrap ErrBadConnectionString: %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.mention) {
				t.Errorf("error %q does not mention %q", msg, tc.mention)
			}
			if strings.Contains(msg, testKey) || strings.Contains(msg, "c2VjcmV0c2ln") || strings.Contains(msg, "not*base64") {
				t.Errorf("error echoes a secret: %q", msg)
			}
		})
	}
}

func TestPartitionOf(t *testing.T) {
	// FNV-1a 32 of "" is 0x811c9dc5; of "a" is 0xe40c292c.
	if got := partitionOf("", 16); got != 0x811c9dc5%16 {
		t.Errorf("partitionOf(\"\") = %d", got)
	}
	if got := partitionOf("a", 7); got != int(uint32(0xe40c292c)%7) {
		t.Errorf("partitionOf(\"a\") = %d", got)
	}
}

func TestEscapeKey(t *testing.T) {
	if got := escapeKey("a/b#c?d\\e%f\x01"); got != "a%2Fb%23c%3Fd%5Ce%25f%01" {
		t.Errorf("escapeKey = %q", got)
	}
}
