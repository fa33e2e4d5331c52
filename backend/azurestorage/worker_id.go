package azurestorage

import (
	"fmt"
	"os"
	"sync"

	"github.com/google/uuid"
)

func defaultWorkerID() string {
	return fmt.Sprintf("%s-%d-%s", hostName(), os.Getpid(), uuid.NewString()[:8])
}

// hostName is this machine's host name, published in the worker's
// heartbeat; "unknown" when the system does not say.
var hostName = sync.OnceValue(func() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "unknown"
	}
	return host
})
