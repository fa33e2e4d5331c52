package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// failedBatchBody is a $batch response whose changeset failed on its second
// operation with status, in the format of the Table service: the outer
// response is 202 Accepted and the changeset holds the failed operation's
// response alone.
func failedBatchBody(status int) string {
	code := map[int]string{
		400: "PropertyValueTooLarge", 404: "ResourceNotFound", 408: "OperationTimedOut", 409: "EntityAlreadyExists",
		412: "UpdateConditionNotSatisfied", 429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy",
	}[status]
	lines := []string{
		"--batchresponse_5a0d7e73-6c1b-4c1e-9f2b-3c2d1e0f4a5b",
		"Content-Type: multipart/mixed; boundary=changesetresponse_0c6f1a9e-2d3b-4e5f-8a7b-9c0d1e2f3a4b",
		"",
		"--changesetresponse_0c6f1a9e-2d3b-4e5f-8a7b-9c0d1e2f3a4b",
		"Content-Type: application/http",
		"Content-Transfer-Encoding: binary",
		"",
		fmt.Sprintf("HTTP/1.1 %d %s", status, http.StatusText(status)),
		"Content-ID: 2",
		"X-Content-Type-Options: nosniff",
		"Cache-Control: no-cache",
		"DataServiceVersion: 3.0;",
		"Content-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
		"",
		`{"odata.error":{"code":"` + code + `","message":{"lang":"en-US","value":"1:The operation failed.\nRequestId:2f0c3c7e-0002-0035-0e6b-000000000000\nTime:2030-01-02T03:04:05.0000000Z"}}}`,
		"--changesetresponse_0c6f1a9e-2d3b-4e5f-8a7b-9c0d1e2f3a4b--",
		"--batchresponse_5a0d7e73-6c1b-4c1e-9f2b-3c2d1e0f4a5b--",
		"",
	}
	return strings.Join(lines, "\r\n")
}

// fakeTable answers every request with status and body (a $batch body is
// multipart, any other JSON), so errors come out of the real SDK as it
// builds them.
func fakeTable(t *testing.T, status int, body string) *aztables.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "$batch") && strings.HasPrefix(body, "--") {
			w.Header().Set("Content-Type", "multipart/mixed; boundary=batchresponse_5a0d7e73-6c1b-4c1e-9f2b-3c2d1e0f4a5b")
		} else {
			w.Header().Set("Content-Type", "application/json;odata=minimalmetadata;streaming=true;charset=utf-8")
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	c, err := aztables.NewClientWithNoCredential(srv.URL+"/devstoreaccount1/Fake", &aztables.ClientOptions{
		ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func batchActions() []aztables.TransactionAction {
	etag := azcore.ETag(`W/"datetime'2030-01-02T03%3A04%3A05.0000000Z'"`)
	return []aztables.TransactionAction{
		{ActionType: aztables.TransactionTypeAdd, Entity: newEntity("p", "a").marshal()},
		{ActionType: aztables.TransactionTypeUpdateReplace, Entity: newEntity("p", "b").marshal(), IfMatch: &etag},
	}
}

// TestClassifyFailedBatch: a failed entity-group transaction comes from
// aztables as an *azcore.ResponseError with the outer status 202 and the
// failed operation's status only in the multipart body; the helpers see
// that inner status.
func TestClassifyFailedBatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		status                                  int
		transient, conflict, precondition, gone bool
	}{
		{status: 500, transient: true},
		{status: 503, transient: true},
		{status: 408, transient: true},
		{status: 429, transient: true},
		{status: 409, conflict: true},
		{status: 412, precondition: true},
		{status: 404, gone: true},
		{status: 400},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			_, err := fakeTable(t, http.StatusAccepted, failedBatchBody(tc.status)).SubmitTransaction(ctx, batchActions(), nil)
			var re *azcore.ResponseError
			if !errors.As(err, &re) || re.StatusCode != http.StatusAccepted {
				t.Fatalf("SubmitTransaction: %v; want an *azcore.ResponseError with status 202 (how aztables reports a failed batch)", err)
			}
			for _, e := range []error{err, fmt.Errorf("commit: %w", err)} {
				if got := httpStatus(e); got != tc.status {
					t.Errorf("httpStatus = %d, want %d", got, tc.status)
				}
				if got := transient(e); got != tc.transient {
					t.Errorf("transient = %v, want %v", got, tc.transient)
				}
				if got := isConflict(e); got != tc.conflict {
					t.Errorf("isConflict = %v, want %v", got, tc.conflict)
				}
				if got := isPrecondition(e); got != tc.precondition {
					t.Errorf("isPrecondition = %v, want %v", got, tc.precondition)
				}
				if got := isNotFound(e); got != tc.gone {
					t.Errorf("isNotFound = %v, want %v", got, tc.gone)
				}
			}
		})
	}
}

// TestClassifyOtherErrors: errors that are not failed batches keep their
// classification by the response status.
func TestClassifyOtherErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	odataErr := func(code string) string {
		return `{"odata.error":{"code":"` + code + `","message":{"lang":"en-US","value":"failed"}}}`
	}
	// A batch refused as a whole (not a changeset failure).
	_, err := fakeTable(t, http.StatusBadRequest, odataErr("InvalidInput")).SubmitTransaction(ctx, batchActions(), nil)
	if httpStatus(err) != 400 || transient(err) || isConflict(err) || isPrecondition(err) {
		t.Errorf("whole batch refused with 400: status %d, transient %v", httpStatus(err), transient(err))
	}
	_, err = fakeTable(t, http.StatusServiceUnavailable, odataErr("ServerBusy")).SubmitTransaction(ctx, batchActions(), nil)
	if httpStatus(err) != 503 || !transient(err) {
		t.Errorf("whole batch refused with 503: status %d, transient %v", httpStatus(err), transient(err))
	}
	// A 202 whose body is a JSON error: no operation status to read.
	_, err = fakeTable(t, http.StatusAccepted, odataErr("InternalError")).SubmitTransaction(ctx, batchActions(), nil)
	if err == nil || transient(err) || isConflict(err) || isPrecondition(err) || isNotFound(err) {
		t.Errorf("202 with a JSON error: %v, status %d, transient %v", err, httpStatus(err), transient(err))
	}
	// Single-entity operations.
	for _, tc := range []struct {
		status    int
		transient bool
		is        func(error) bool
	}{
		{412, false, isPrecondition}, {409, false, isConflict}, {404, false, isNotFound},
		{503, true, nil}, {500, true, nil}, {429, true, nil}, {400, false, nil},
	} {
		etag := azcore.ETag("*")
		_, err := fakeTable(t, tc.status, odataErr("X")).UpdateEntity(ctx, newEntity("p", "a").marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
		if httpStatus(err) != tc.status || transient(err) != tc.transient || (tc.is != nil && !tc.is(err)) {
			t.Errorf("UpdateEntity answered %d: status %d, transient %v", tc.status, httpStatus(err), transient(err))
		}
	}
	if httpStatus(errors.New("x")) != 0 || transient(nil) || transient(context.Canceled) {
		t.Error("non-storage errors misclassified")
	}
}

// TestBatchPreconditionFailure runs entity-group transactions on Azurite
// that fail on their second operation, with a stale ETag (412), adding an
// existing row (409) and replacing a missing one (404), and checks what
// the helpers make of the errors.
func TestBatchPreconditionFailure(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tbl := b.history
	pk := "batch-test"
	row := func(rk, v string) []byte {
		e := newEntity(pk, rk)
		e["V"] = v
		return e.marshal()
	}
	if _, err := tbl.AddEntity(ctx, row("a", "1"), nil); err != nil {
		t.Fatal(err)
	}
	resp, err := tbl.GetEntity(ctx, pk, "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	stale := resp.ETag
	if _, err := tbl.UpdateEntity(ctx, row("a", "2"), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeReplace}); err != nil {
		t.Fatal(err)
	}
	check := func(what string, second aztables.TransactionAction, want int, is func(error) bool) {
		t.Helper()
		actions := []aztables.TransactionAction{
			{ActionType: aztables.TransactionTypeAdd, Entity: row("new-"+what, "x")},
			second,
		}
		_, err := tbl.SubmitTransaction(ctx, actions, nil)
		if err == nil {
			t.Fatalf("%s: the batch succeeded", what)
		}
		if got := httpStatus(err); got != want || !is(err) || transient(err) {
			t.Errorf("%s: httpStatus %d (want %d), classified %v, transient %v: %v", what, got, want, is(err), transient(err), err)
		}
		if _, err := tbl.GetEntity(ctx, pk, "new-"+what, nil); !isNotFound(err) {
			t.Errorf("%s: the failed batch's first operation was applied: %v", what, err)
		}
	}
	check("stale-etag", aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("a", "3"), IfMatch: &stale},
		http.StatusPreconditionFailed, isPrecondition)
	check("add-existing", aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: row("a", "3")},
		http.StatusConflict, isConflict)
	any := azcore.ETagAny
	check("replace-missing", aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("missing", "3"), IfMatch: &any},
		http.StatusNotFound, isNotFound)
}
