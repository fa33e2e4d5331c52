package azurestorage

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// escapeKey makes s usable as a PartitionKey or RowKey, which may not hold
// '/', '\\', '#', '?' or control characters. '%' is escaped too, so the
// mapping is reversible and injective. Order among plain ASCII ids is kept.
func escapeKey(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '/' || c == '\\' || c == '#' || c == '?' || c == '%' || c < 0x20 || c == 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// quote makes s an OData string literal.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// entity is a table row being written or read.
type entity map[string]any

func newEntity(pk, rk string) entity { return entity{"PartitionKey": pk, "RowKey": rk} }

// setBinary stores b as an Edm.Binary property.
func (e entity) setBinary(name string, b []byte) {
	e[name] = base64.StdEncoding.EncodeToString(b)
	e[name+"@odata.type"] = "Edm.Binary"
}

// setInt64 stores n as an Edm.Int64 property.
func (e entity) setInt64(name string, n int64) {
	e[name] = strconv.FormatInt(n, 10)
	e[name+"@odata.type"] = "Edm.Int64"
}

func (e entity) str(name string) string {
	s, _ := e[name].(string)
	return s
}

func (e entity) binary(name string) ([]byte, error) {
	s, ok := e[name].(string)
	if !ok {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("property %s is not base64: %w", name, err)
	}
	return b, nil
}

func (e entity) int64(name string) int64 {
	switch v := e[name].(type) {
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	case float64:
		return int64(v)
	case json.Number:
		n, _ := v.Int64()
		return n
	}
	return 0
}

func (e entity) boolean(name string) bool {
	v, _ := e[name].(bool)
	return v
}

func (e entity) etag() azcore.ETag { return azcore.ETag(e.str("odata.etag")) }

func (e entity) marshal() []byte {
	b, err := json.Marshal(map[string]any(e))
	if err != nil {
		panic(fmt.Sprintf("azurestorage: marshal entity: %v", err)) // only strings, numbers and bools
	}
	return b
}

func parseEntity(b []byte) (entity, error) {
	var e entity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("unreadable table entity: %w", err)
	}
	return e, nil
}

// httpStatus returns the status of a storage error, or 0. For a failed
// entity-group transaction it is the status of the operation that failed.
//
// aztables (v1.4.1, transactional_batch.go) reports a failed transaction as
// an *azcore.ResponseError of the outer response: StatusCode 202 Accepted,
// no ErrorCode, and RawResponse's body the multipart/mixed batch response,
// already read into memory, whose changeset holds the failed operation's
// response ("HTTP/1.1 412 Precondition Failed", Content-ID its 1-based
// index, a JSON odata.error body).
func httpStatus(err error) int {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return 0
	}
	if re.StatusCode == http.StatusAccepted {
		if s := batchStatus(re.RawResponse); s != 0 {
			return s
		}
	}
	return re.StatusCode
}

func isNotFound(err error) bool     { return httpStatus(err) == http.StatusNotFound }
func isConflict(err error) bool     { return httpStatus(err) == http.StatusConflict }
func isPrecondition(err error) bool { return httpStatus(err) == http.StatusPreconditionFailed }
