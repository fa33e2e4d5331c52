package dashboard_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// text is a JavaScript expression for the text of the first element that
// matches a CSS selector ("" when none does).
func text(sel string) string {
	return fmt.Sprintf(`((document.querySelector(%q) || {}).textContent || "")`, sel)
}

// refused accepts the console entries the browser writes for API requests
// answered with one of codes: the test provokes those refusals, and the page
// shows them; anything else in the console still fails the test.
func refused(codes ...int) func(chromedp.ConsoleMessage) bool {
	return func(m chromedp.ConsoleMessage) bool {
		if m.Source != "network" || !strings.Contains(m.URL, "/api/") {
			return false
		}
		for _, c := range codes {
			if strings.Contains(m.Text, fmt.Sprintf("status of %d ", c)) {
				return true
			}
		}
		return false
	}
}

// dashboardEnv is the worker and browser the browser tests share.
type dashboardEnv struct {
	b     *browser
	shots *shots
	w     *worker.Worker
	base  string
	c     client.Client
}

// TestDashboardInBrowser drives the dashboard in headless Chromium against
// a real worker (SQLite): what an operator sees and does, live. Every tab
// fails the test if the page writes an error to its console. Screenshots of
// each page, at 1280×800 and 390 px wide, go to $DRONEHUB_SCREENSHOTS (see
// docs/dashboard.md).
func TestDashboardInBrowser(t *testing.T) {
	b := startBrowser(t)
	cfg := testkit.Config(t)
	cfg.DashboardInterval = 100 * time.Millisecond
	// A user's orchestration with a bug: its work is dead-lettered at its
	// first failure.
	cfg.MaxDequeueCount = 1
	cfg.Register = func(r *task.TaskRegistry) error {
		return r.AddOrchestratorN("Buggy", func(*task.OrchestrationContext) (any, error) {
			panic("a bug in a user's orchestration")
		})
	}
	w := testkit.Start(t, cfg)
	base := serve(t, w)
	c, err := client.Dial(base, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &dashboardEnv{b: b, shots: newShots(t), w: w, base: base, c: c}

	// In order: each mission takes one of the three drones.
	t.Run("LiveFlight", e.testLiveFlight)
	t.Run("CancelShowsCompensation", e.testCancel)
	t.Run("ReplayDeadLetter", e.testReplayDeadLetter)
	t.Run("Orchestrations", e.testOrchestrations)
	t.Run("APIKey", func(t *testing.T) { testAPIKey(t, b, e.shots) })
}

// testLiveFlight: a mission started over the API appears in the list; as
// the simulator flies it, its phase cell advances and the drone's marker
// moves on the fleet map, with no reload.
func (e *dashboardEnv) testLiveFlight(t *testing.T) {
	ctx := context.Background()
	list := e.b.open(t, nil)
	list.run("open the mission list", 20*time.Second, chromedp.Navigate(e.base+"/"))
	list.waitFor("the list to load", 15*time.Second, `location.pathname === "/ui/" && !!document.querySelector("#list") && document.getElementById("conn").dataset.state === "live"`)
	eval[bool](list, `window.sameDocument = true`)

	if _, err := e.c.StartMission(ctx, testkit.Request("m-fly")); err != nil {
		t.Fatal(err)
	}
	list.waitFor("the new mission's row", 15*time.Second, `!!document.querySelector('tr[data-id="m-fly"]')`)
	st := testkit.AwaitDispatched(t, e.w, "m-fly")
	phase := text(`tr[data-id="m-fly"] td[data-col="phase"]`)
	list.waitFor("phase HeadedToPickup in the row", 15*time.Second, phase+` === "HeadedToPickup"`)
	list.waitFor("the drone in the row", 5*time.Second, text(`tr[data-id="m-fly"] td[data-col="drone"]`)+fmt.Sprintf(` === %q`, st.DroneID))

	fleet := e.b.open(t, nil)
	fleet.run("open the fleet", 20*time.Second, chromedp.Navigate(e.base+"/ui/#/fleet"))
	marker := fmt.Sprintf(`document.querySelector('#fleet-map g[data-drone=%q]')`, st.DroneID)
	fleet.waitFor("the drone's marker", 15*time.Second, marker+` && `+marker+`.getAttribute("data-condition") === "silent"`)
	x0 := eval[string](fleet, marker+`.getAttribute("data-x") + "," + `+marker+`.getAttribute("data-y")`)

	// Fly to the pickup and a little way on towards the drop-off.
	flight := testkit.Flight(t, e.w, st, simulator.FaultNone, 0)
	sink := testkit.Sink(t, e.w)
	sent, pastPickup := 0, -1
	var at domain.LatLon
	for pastPickup < 0 || sent < pastPickup+6 {
		fr, ok := flight.Next()
		if !ok {
			t.Fatal("the flight ended before the drone left the pickup")
		}
		if fr.Position != nil {
			at = fr.Position.LatLon()
		}
		if err := sink.Send(ctx, []domain.Frame{fr}); err != nil {
			t.Fatal(err)
		}
		sent++
		if pastPickup < 0 && domain.DistanceM(at, st.Route.Pickup) < 1 {
			pastPickup = sent
		}
	}
	list.waitFor("the phase cell to advance past the pickup", 20*time.Second,
		`["PickedUp", "HeadedToDropoff"].includes(`+phase+`)`)
	fleet.waitFor("the marker to move and show the drone flying", 20*time.Second,
		marker+`.getAttribute("data-x") + "," + `+marker+fmt.Sprintf(`.getAttribute("data-y") !== %q && `, x0)+marker+`.getAttribute("data-condition") === "flying"`)

	// A marker is a button: Enter on a focused one shows that drone...
	other := "drone-3"
	if st.DroneID == other {
		other = "drone-2"
	}
	fleet.run("pick a drone with the keyboard", 10*time.Second,
		chromedp.Focus(chromedp.CSS(fmt.Sprintf(`#fleet-map g[data-drone=%q]`, other))),
		chromedp.KeyEvent(kb.Enter))
	fleet.waitFor("the picked drone", 10*time.Second, text("#drone-h")+fmt.Sprintf(` === "Drone %s"`, other))
	// ...and a click on one shows the drone's state and its mission.
	fleet.run("pick the drone on the map", 10*time.Second, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#fleet-map g[data-drone=%q] circle.dot`, st.DroneID))))
	fleet.waitFor("the drone's state and mission", 10*time.Second,
		text("#drone-h")+fmt.Sprintf(` === "Drone %s" && `, st.DroneID)+text("#drone-mission")+` === "m-fly" && `+text("#drone-panel")+`.includes("inflight")`)

	detail := e.b.open(t, nil)
	detail.run("open the mission", 20*time.Second, chromedp.Navigate(e.base+"/ui/#/missions/m-fly"))
	detail.waitFor("the route and the drone on it", 15*time.Second, `!!document.querySelector('#route-map g.marker[data-x]') && document.querySelectorAll("#timeline li").length >= 4`)
	e.shots.take(detail, "mission", `!!document.querySelector('#route-map g.marker[data-x]')`)
	e.shots.take(fleet, "fleet", `!!document.querySelector("#fleet-map g.marker")`)

	if err := simulator.Fly(ctx, sink, 0, flight); err != nil {
		t.Fatal(err)
	}
	list.waitFor("the phase cell to show the delivery completed", 30*time.Second, phase+` === "Completed"`)
	detail.waitFor("the detail page to show it completed", 15*time.Second, text("#phase")+` === "Completed"`)
	if !eval[bool](list, `window.sameDocument === true`) || !eval[bool](fleet, `!!document.querySelector("#fleet-map")`) {
		t.Error("a page was reloaded")
	}
	e.shots.take(list, "missions", `!!document.querySelector('tr[data-id="m-fly"]')`)
}

// testCancel: cancelling from the detail page asks first, then shows the
// compensation record; a refused action shows the API's reason.
func (e *dashboardEnv) testCancel(t *testing.T) {
	ctx := context.Background()
	if _, err := e.c.StartMission(ctx, testkit.Request("m-cancel")); err != nil {
		t.Fatal(err)
	}
	testkit.AwaitDispatched(t, e.w, "m-cancel")
	d := e.b.open(t, refused(403))
	d.run("open the mission", 20*time.Second, chromedp.Navigate(e.base+"/ui/#/missions/m-cancel"))
	d.waitFor("the mission", 15*time.Second, text("#phase")+` === "HeadedToPickup"`)

	// Missions have no public events: the worker refuses, and the page says why.
	d.run("raise an event", 10*time.Second,
		chromedp.Click(chromedp.CSS(`button[data-action="event"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.SendKeys(chromedp.ID("confirm-f0"), "approve"),
		chromedp.Click(chromedp.ID("confirm-ok")))
	d.waitFor("the refusal", 10*time.Second, text("#action-msg")+`.includes("HTTP 403") && `+text("#action-msg")+`.includes("is not public")`)

	// Asked first: keeping it changes nothing.
	d.run("start a cancel and keep the mission", 10*time.Second,
		chromedp.Click(chromedp.CSS(`button[data-action="cancel"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.Click(chromedp.ID("confirm-cancel")),
		chromedp.WaitNotVisible(chromedp.ID("confirm")))
	if md := testkit.Metadata(t, e.w, "m-cancel"); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Fatalf("the mission is %s after the cancel was not confirmed", md.RuntimeStatus)
	}
	d.run("cancel the mission", 10*time.Second,
		chromedp.Click(chromedp.CSS(`button[data-action="cancel"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.SendKeys(chromedp.ID("confirm-f0"), "the customer called"),
		chromedp.Click(chromedp.ID("confirm-ok")))
	d.waitFor("the cancellation to be accepted", 10*time.Second, text("#action-msg")+`.includes("Cancellation requested")`)
	// Cancelled before the pickup: the drone is recalled and released and
	// the customer told; there is no package to reschedule.
	d.waitFor("the compensation record", 30*time.Second,
		text("#phase")+` === "Cancelled" && `+text("#subtitle")+`.includes("Completed") && document.querySelectorAll("#compensations tbody tr").length === 3`)
	record := eval[string](d, text("#compensations"))
	for _, step := range []string{"recall-drone", "release-drone", "notify-customer", "compensated"} {
		if !strings.Contains(record, step) {
			t.Errorf("compensation record %q lacks %q", record, step)
		}
	}
	if why := eval[string](d, text("#compensation")); !strings.Contains(why, "the customer called") {
		t.Errorf("compensation section %q does not say why", why)
	}
	e.shots.take(d, "mission-cancelled", `document.querySelectorAll("#compensations tbody tr").length === 3`)
}

// testReplayDeadLetter: the hub page lists a dead letter with its reason,
// and replaying it (after a confirmation) shows the worker's answer and
// takes it off the list.
func (e *dashboardEnv) testReplayDeadLetter(t *testing.T) {
	ctx := context.Background()
	if _, err := e.w.Client().ScheduleNewOrchestration(ctx, "Buggy", api.WithInstanceID("buggy-1")); err != nil {
		t.Fatal(err)
	}
	dl := e.w.Backend().(taskhub.DeadLetterer)
	testkit.Eventually(t, 30*time.Second, "the buggy instance's work to be dead-lettered", func() bool {
		letters, err := dl.DeadLetters(ctx)
		return err == nil && len(letters) == 1
	})
	h := e.b.open(t, refused(410))
	h.run("open the hub page", 20*time.Second, chromedp.Navigate(e.base+"/ui/#/hub"))
	h.waitFor("the dead letter", 15*time.Second, `!!document.querySelector('tr[data-dead-letter] button[data-replay]')`)
	if row := eval[string](h, text("tr[data-dead-letter]")); !strings.Contains(row, "buggy-1") || !strings.Contains(row, "failed") {
		t.Errorf("dead letter row %q, want the instance and the reason", row)
	}
	if kind := eval[string](h, text("#hub-overview")); !strings.Contains(kind, "sqlite") {
		t.Errorf("hub overview %q does not name the backend", kind)
	}
	e.shots.take(h, "hub", `!!document.querySelector("tr[data-dead-letter]")`)
	h.run("replay it", 10*time.Second,
		chromedp.Click(chromedp.CSS(`button[data-replay]`)),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.Click(chromedp.ID("confirm-ok")))
	h.waitFor("the answer, and the dead letter gone", 15*time.Second,
		text("#dl-msg")+`.startsWith("Dead letter") && !document.querySelector("tr[data-dead-letter]")`)
	// Its instance ended Failed when it was set aside, so the worker
	// drops it instead of replaying it (HTTP 410), and says so.
	if msg := eval[string](h, text("#dl-msg")); !strings.Contains(msg, "410") || !strings.Contains(msg, "dropped") {
		t.Errorf("replay answer %q, want the worker's 410 and why", msg)
	}
	letters, err := dl.DeadLetters(ctx)
	if err != nil || len(letters) != 0 {
		t.Errorf("dead letters after the replay: %v, %v", letters, err)
	}
}

// testOrchestrations: every orchestration, not only missions, is listed,
// filterable by orchestrator name, and inspectable.
func (e *dashboardEnv) testOrchestrations(t *testing.T) {
	o := e.b.open(t, nil)
	o.run("open the orchestrations", 20*time.Second, chromedp.Navigate(e.base+"/ui/#/instances?name=Buggy"))
	o.waitFor("the buggy instance alone", 15*time.Second,
		`!!document.querySelector('tr[data-id="buggy-1"]') && document.querySelectorAll("#list tbody tr[data-id]").length === 1`)
	o.run("show every orchestration", 10*time.Second, chromedp.Click(chromedp.CSS(`form.filters button[type="button"]`)))
	o.waitFor("missions and the buggy instance", 15*time.Second,
		`!!document.querySelector('tr[data-id="buggy-1"]') && !!document.querySelector('tr[data-id="m-fly"]')`)
	e.shots.take(o, "orchestrations", `!!document.querySelector('tr[data-id="buggy-1"]')`)
	o.run("open the buggy instance", 10*time.Second, chromedp.Click(chromedp.CSS(`tr[data-id="buggy-1"] a`)))
	o.waitFor("its failure and history", 15*time.Second,
		text("#facts")+`.includes("DeadLettered") && document.querySelectorAll("#history-table tbody tr").length > 0`)
}

// testAPIKey: on a worker with API keys the page asks for one, says
// clearly when it is refused, and works once it is right.
func testAPIKey(t *testing.T, b *browser, s *shots) {
	const key = "the-right-key-0123456789"
	cfg := testkit.Config(t)
	cfg.APIKeys = []string{key}
	cfg.DashboardInterval = 100 * time.Millisecond
	w := testkit.Start(t, cfg)
	base := serve(t, w)
	k := b.open(t, refused(401))
	k.run("open the dashboard", 20*time.Second, chromedp.Navigate(base+"/ui/"))
	k.waitFor("the key prompt", 15*time.Second, `!!document.querySelector("#api-key")`)
	k.run("enter a wrong key", 10*time.Second,
		chromedp.SendKeys(chromedp.ID("api-key"), "a-wrong-key-0123456789"),
		chromedp.Click(chromedp.CSS(`.keyform button[type="submit"]`)))
	k.waitFor("the refusal", 15*time.Second, text("#key-error")+`.includes("refused this API key")`)
	if msg := eval[string](k, text("#key-error")); !strings.Contains(msg, "HTTP 401") {
		t.Errorf("refusal %q does not say what the worker answered", msg)
	}
	s.take(k, "api-key", `!!document.querySelector("#key-error")`)
	k.run("enter the right key", 10*time.Second,
		chromedp.SendKeys(chromedp.ID("api-key"), key),
		chromedp.Click(chromedp.CSS(`.keyform button[type="submit"]`)))
	k.waitFor("the missions, live", 15*time.Second, `!!document.querySelector("#list") && document.getElementById("conn").dataset.state === "live"`)
	if where := eval[string](k, `(sessionStorage.getItem("dronehub.apiKey") === `+fmt.Sprintf("%q", key)+`) + "," + localStorage.length + "," + location.href`); where != "true,0,"+base+"/ui/#/missions" && where != "true,0,"+base+"/ui/" {
		t.Errorf("key kept as %q: want it in sessionStorage only, and never in the URL", where)
	}
}
