// The live feed: GET /api/events, read with fetch() so that the API key
// travels in the Authorization header (EventSource cannot send one). The
// first update is a snapshot, the later ones only what changed; the page
// keeps the merged state here and tells the open page what changed.

import { apiURL, headers, problemDetail, authNeeded } from './api.js';

export class Live extends EventTarget {
  constructor() {
    super();
    this.instances = new Map();
    this.drones = new Map();
    this.fleet = null;
    this.hub = null;
    this.problem = '';
    this.topics = [];
    this.state = 'idle';
    this.ctrl = null;
    this.run = 0;
  }

  // follow (re)connects when the set of topics changes.
  follow(topics) {
    const want = [...topics].sort();
    if (want.join(',') === this.topics.join(',') && this.ctrl) return;
    this.topics = want;
    this.restart();
  }

  restart() {
    this.stop();
    const run = ++this.run;
    this.ctrl = new AbortController();
    this.loop(run, this.ctrl.signal).catch((e) => {
      if (e.name !== 'AbortError') this.setState('offline', String(e.message || e));
    });
  }

  stop() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }

  setState(state, text) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, text: text || '' } }));
  }

  async loop(run, signal) {
    let delay = 1000;
    while (!signal.aborted && run === this.run) {
      this.setState('connecting', 'Connecting…');
      try {
        const res = await fetch(apiURL('api/events', { topics: this.topics.join(',') }), {
          headers: headers({ Accept: 'text/event-stream' }), signal, cache: 'no-store',
        });
        if (res.status === 401) {
          const { detail } = await problemDetail(res);
          this.setState('auth', 'API key needed');
          authNeeded(detail);
          return; // the app restarts the feed once a key is given
        }
        if (!res.ok) {
          const { detail } = await problemDetail(res);
          throw new Error(`HTTP ${res.status}: ${detail}`);
        }
        await this.read(res.body, signal);
        delay = 1000;
        this.setState('connecting', 'Reconnecting…');
      } catch (e) {
        if (signal.aborted) return;
        this.setState('offline', `Disconnected (${e.message}); retrying in ${Math.round(delay / 1000)} s`);
      }
      await pause(delay, signal);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async read(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        this.event(block);
      }
    }
  }

  event(block) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    const msg = JSON.parse(data.join('\n'));
    if (type === 'update') this.apply(msg);
    else if (type === 'bye') this.setState('connecting', msg.reason || 'Reconnecting…');
  }

  // prune forgets instances that ended over ten minutes ago once many
  // are held, so a page left open on a busy hub does not grow without
  // bound. (Pages keep what they show.)
  prune() {
    if (this.instances.size <= 1000) return;
    const before = Date.now() - 10 * 60 * 1000;
    for (const [id, st] of this.instances) {
      if (['Completed', 'Failed', 'Terminated', 'Canceled'].includes(st.runtimeStatus) && new Date(st.lastUpdatedTime) < before) {
        this.instances.delete(id);
      }
    }
  }

  apply(u) {
    const changed = { instances: [], removed: [], drones: [], removedDrones: [], fleet: false, hub: false, snapshot: !!u.snapshot };
    if (u.snapshot) {
      const t = new Set(u.topics || []);
      if (t.has('instances')) this.instances.clear();
      if (t.has('fleet')) this.drones.clear();
      if (t.has('hub')) this.hub = null;
    }
    for (const st of u.instances || []) {
      this.instances.set(st.instanceId, st);
      changed.instances.push(st);
    }
    for (const id of u.removed || []) {
      this.instances.delete(id);
      changed.removed.push(id);
    }
    for (const d of u.drones || []) {
      this.drones.set(d.droneId, d);
      changed.drones.push(d);
    }
    for (const id of u.removedDrones || []) {
      this.drones.delete(id);
      changed.removedDrones.push(id);
    }
    if (u.fleet) {
      this.fleet = u.fleet;
      changed.fleet = true;
    }
    if (u.hub) {
      this.hub = u.hub;
      changed.hub = true;
    }
    if (u.problem !== undefined) this.problem = u.problem;
    this.prune();
    this.setState(this.problem ? 'problem' : 'live', this.problem ? this.problem : 'Live');
    this.dispatchEvent(new CustomEvent('change', { detail: changed }));
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
