package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dronehub/dronehub/scale"
)

// WatchScale registers the scale signal's gauges (GET /api/hub/scale's
// figures, docs/deploy.md "Scaling rule"), read from src at scrape time. A
// scrape may start a sample of storage when the last one is older than the
// monitor's interval, waits for it at most scrapeWait, and otherwise
// serves the last signal; before the first sample the gauges are absent.
func (m *Metrics) WatchScale(src scale.Source) error {
	c := &scaleCollector{m: m, src: src}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "scale", name), help, labels, nil)
	}
	c.recommended = d("recommended_workers", "Workers the task hub needs now, by the scaling rule (docs/deploy.md); GET /api/hub/scale gives the reason.")
	c.current = d("current_workers", "Live workers of the task hub (heartbeats), as the scale signal's last sample saw them.")
	c.partitions = d("partitions", "Control-queue partitions of the task hub: no more workers than this run orchestrations.")
	c.controlDepth = d("control_queue_depth", "Approximate messages in all control queues, invisible ones (timers, work in flight) included, at the scale signal's last sample.")
	c.workDepth = d("work_item_queue_depth", "Approximate messages in the work-item queue, invisible ones included, at the scale signal's last sample.")
	c.controlAge = d("oldest_control_message_age_seconds", "Age of the oldest visible message at the front of any control queue (0 when none), at the scale signal's last sample.")
	c.workAge = d("oldest_work_item_age_seconds", "Age of the oldest visible work item (0 when none), at the scale signal's last sample.")
	c.idle = d("idle_seconds", "How long the task hub has been idle (nothing queued, no drone on a mission); 0 when it is not.")
	c.sampleAge = d("sample_age_seconds", "Age of the sample the scale signal was computed from.")
	c.rule = d("rule", "1 for the rule behind the current recommendation, 0 for the others (docs/deploy.md).", "rule")
	return m.register(c, false)
}

type scaleCollector struct {
	m   *Metrics
	src scale.Source

	recommended, current, partitions, controlDepth, workDepth *prometheus.Desc
	controlAge, workAge, idle, sampleAge, rule                *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *scaleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.recommended, c.current, c.partitions, c.controlDepth, c.workDepth,
		c.controlAge, c.workAge, c.idle, c.sampleAge, c.rule} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *scaleCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.m.ctx, scrapeWait)
	defer cancel()
	st, err := c.src.Status(ctx)
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.recommended, float64(st.RecommendedWorkers))
	gauge(c.current, float64(st.CurrentWorkers))
	gauge(c.partitions, float64(st.Partitions))
	gauge(c.controlDepth, float64(st.ControlQueueDepth))
	gauge(c.workDepth, float64(st.WorkItemQueueDepth))
	gauge(c.controlAge, st.OldestControlMessageAgeSeconds)
	gauge(c.workAge, st.OldestWorkItemAgeSeconds)
	gauge(c.idle, st.IdleSeconds)
	gauge(c.sampleAge, time.Since(st.SampledAt).Seconds())
	// Every rule, always: 1 for the one behind the recommendation.
	for _, r := range scale.Rules() {
		v := 0.0
		if string(r) == st.Rule {
			v = 1
		}
		gauge(c.rule, v, string(r))
	}
}
