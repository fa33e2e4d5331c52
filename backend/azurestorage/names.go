package azurestorage

import (
	"fmt"
	"hash/fnv"
	"strings"
)

// names are the storage resources of one task hub.
type names struct {
	hub           string
	historyTable  string // <Hub>History: sentinel/status rows, history rows, stashed events
	deadTable     string // <Hub>DeadLetters
	indexTable    string // <Hub>Instances: the instance index (index.go)
	dronesTable   string // <Hub>Drones
	effectsTable  string // <Hub>Effects
	leaseTable    string // <Hub>Partitions: partition ownership and worker heartbeats
	workItems     string // <hub>-workitems
	telemetry     string // <hub>-telemetry
	largeMessages string // <hub>-largemessages container
	partitions    int
}

// validateHubName allows 3-45 letters and digits starting with a letter, so
// every derived table, queue and container name is valid.
func validateHubName(hub string) error {
	if len(hub) < 3 || len(hub) > 45 {
		return fmt.Errorf("azurestorage: hub name %q must be 3-45 characters", hub)
	}
	for i, c := range hub {
		letter := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return fmt.Errorf("azurestorage: hub name %q must be letters and digits, starting with a letter", hub)
		}
	}
	return nil
}

func newNames(hub string, partitions int) names {
	lower := strings.ToLower(hub)
	return names{
		hub:           hub,
		historyTable:  hub + "History",
		deadTable:     hub + "DeadLetters",
		indexTable:    hub + "Instances",
		dronesTable:   hub + "Drones",
		effectsTable:  hub + "Effects",
		leaseTable:    hub + "Partitions",
		workItems:     lower + "-workitems",
		telemetry:     lower + "-telemetry",
		largeMessages: lower + "-largemessages",
		partitions:    partitions,
	}
}

func (n names) controlQueue(p int) string {
	return fmt.Sprintf("%s-control-%02d", strings.ToLower(n.hub), p)
}

// partitionOf maps an instance to its control queue: 32-bit FNV-1a of the
// UTF-8 id, modulo the partition count.
func partitionOf(id string, partitions int) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}
