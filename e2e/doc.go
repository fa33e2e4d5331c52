// Package e2e holds dronehub's multi-process end-to-end tests: real
// `dronehub worker` processes sharing one task hub on Azurite, driven over
// HTTP the way a client and a fleet of drones would drive them, through
// scale-out, a killed worker and a storage outage.
//
// The package has no code outside its tests. Run it with
//
//	CI=true go test -race -count=1 ./e2e
//
// It builds the dronehub binary once (without -race, to spare the CPU the
// workers share with Azurite) and needs Azurite installed by `npm ci` at
// the module root; without it the tests skip, or fail when CI=true.
// Set DRONEHUB_E2E_KEEP=1 to keep the workers' JSON log files after a run
// (their directory is logged), and DRONEHUB_E2E_LOG_LEVEL=debug for the
// workers' debug logs. A failed test keeps them in any case: they are
// copied to $DRONEHUB_TEST_ARTIFACTS/<test>-<time>, or under
// <temp dir>/dronehub-test-artifacts, and a timeout's failure message
// names that directory, shows the tail of each log and reports the task
// hub as storage sees it (lease rows, queue depths, instances by status,
// the stuck missions' last history events). A mission that ends other
// than its flight decided gets a trace of the signals in its history, read
// from the task hub.
//
// What the tests check, for every mission: it reaches a terminal state; a
// delivery without a fault completes (output.phase Completed) and its
// history schedules each step (AcceptMission … CompleteMission) exactly
// once; a drone fault between pickup and drop-off fails it after
// ConfirmPickup, and each compensation runs exactly once with status
// compensated; the history is one whole execution; and every drone is free
// again at the end.
package e2e
