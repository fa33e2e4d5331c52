// The task hub: backend, partitions and their owners, queue depths, the
// workers holding leases, instance counts, dead letters (with replay), the
// storage request counters and the live feed's own work.

import { api } from '../api.js';
import { h, replace, dateTime, message, confirmAction } from '../ui.js';

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many || one + 's'}`;
}

export function hubPage(main, app) {
  const overview = h('section', { class: 'panel', id: 'hub-overview', 'aria-labelledby': 'ov-h' });
  const partitions = h('section', { class: 'panel', id: 'hub-partitions', 'aria-labelledby': 'part-h' });
  const dead = h('section', { class: 'panel', id: 'dead-letters', 'aria-labelledby': 'dl-h' });
  const counters = h('section', { class: 'panel', id: 'request-counts', 'aria-labelledby': 'rc-h' });
  const dlMsg = h('div', { class: 'msg', role: 'alert', id: 'dl-msg' });
  const waiting = h('p', { class: 'note' }, 'Waiting for the live feed…');
  let letters = null; // the dead letters as last read
  const shown = new Map(); // section → what it shows, to skip redrawing the same

  replace(main,
    h('h1', { tabindex: '-1' }, 'Task hub'),
    waiting,
    h('div', { class: 'grid2' }, overview, partitions),
    dlMsg, dead,
    h('div', { class: 'grid2' }, counters, h('div')));

  function once(key, value, draw) {
    const j = JSON.stringify(value);
    if (shown.get(key) === j) return;
    shown.set(key, j);
    draw();
  }

  const table = (id, head, rows, empty) => rows.length
    ? h('div', { class: 'table-wrap' }, h('table', { class: 'responsive', id },
      h('thead', {}, h('tr', {}, head.map(([label, cls]) => h('th', { scope: 'col', class: cls }, label)))),
      h('tbody', {}, rows)))
    : h('p', { class: 'note' }, empty);
  const td = (label, v, cls) => h('td', { 'data-label': label, class: cls }, h('span', {}, v));

  function render() {
    const hub = app.live.hub;
    if (!hub) return;
    waiting.hidden = true;
    const info = hub.info;
    const unsupported = hub.unsupported || [];
    once('overview', { info, workers: hub.workers, unsupported }, () => {
      const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
      const inst = info ? Object.entries(info.instances || {}).sort() : [];
      replace(overview,
        h('h2', { id: 'ov-h' }, 'Backend'),
        info
          ? h('dl', { class: 'facts' },
            fact('Kind', info.kind),
            fact('Name', info.name),
            fact('Partitions', info.partitions ? String(info.partitions) : '–'),
            fact('Workers alive', hub.workers && hub.workers.length
              ? h('ul', { id: 'workers' }, hub.workers.map((w) => h('li', { class: 'mono' }, w)))
              : info.kind === 'sqlite' ? 'this worker (a SQLite hub is served by one process)' : 'none holds a partition lease'),
            fact('Instances', inst.length ? inst.map(([k, v]) => `${k} ${v}`).join(', ') : 'none'),
            fact('Dead letters', String(info.deadLetters)))
          : h('p', { class: 'note' }, 'This backend cannot describe itself.'),
        unsupported.length ? h('p', { class: 'note' }, `Not available on this backend: ${unsupported.join(', ')}.`) : null);
    });
    once('partitions', info, () => {
      const depths = Object.entries((info && info.queueDepths) || {}).sort();
      const parts = [];
      for (let p = 0; info && p < (info.partitions || 0); p++) {
        const q = depths.find(([name]) => name.endsWith('-control-' + String(p).padStart(2, '0')));
        parts.push(h('tr', { 'data-partition': p },
          td('Partition', String(p), 'num'),
          td('Owner', (info.owners && info.owners[p]) || 'none (lease free)', 'mono'),
          td('Control queue depth', q ? String(q[1]) : '–', 'num')));
      }
      replace(partitions,
        h('h2', { id: 'part-h' }, 'Partitions and queues'),
        table('partitions', [['Partition', 'num'], ['Owner'], ['Control queue depth', 'num']], parts, 'This backend has no partitions.'),
        h('h3', {}, 'Queue depths'),
        table('queues', [['Queue'], ['Messages', 'num']],
          depths.map(([name, n]) => h('tr', {}, td('Queue', name, 'mono'), td('Messages', String(n), 'num'))),
          'This backend has no queues to show (SQLite keeps its work in tables).'),
        h('p', { class: 'note' }, 'Depths are approximate and include invisible messages (pending timers, messages being processed).'));
    });
    if (!letters || new Date(hub.readAt) > letters.at) {
      letters = { list: hub.deadLetters || [], at: new Date(hub.readAt), supported: !unsupported.includes('dead-letter queue') };
    }
    renderDead();
    once('counters', { rc: hub.requestCounts, feed: hub.feed }, () => {
      const rc = Object.entries(hub.requestCounts || {}).sort();
      const f = hub.feed || {};
      replace(counters,
        h('h2', { id: 'rc-h' }, 'Storage requests'),
        rc.length
          ? table('counts', [['Kind'], ['Requests', 'num']], rc.map(([k, n]) => h('tr', {}, td('Kind', k, 'mono'), td('Requests', String(n), 'num'))), '')
          : h('p', { class: 'note' }, 'This backend does not count its storage requests.'),
        h('p', { class: 'note' }, 'Counted by this worker since it started, retries included.'),
        h('h3', {}, 'Live feed on this worker'),
        h('p', { id: 'feed-stats' }, `${plural(f.clients, 'dashboard')} connected; ${plural(f.ticks, 'read')} of the hub (${plural(f.reads, 'storage query', 'storage queries')}), ${plural(f.messages, 'update')} sent.`));
    });
  }

  function renderDead() {
    once('dead', letters, () => {
      const rows = letters.list.map((d) => h('tr', { 'data-dead-letter': d.id },
        td('ID', d.id, 'mono'),
        td('Queue', d.queue),
        td('Instance', d.instanceId ? h('a', { href: '#/instances/' + encodeURIComponent(d.instanceId) }, d.instanceId) : '–'),
        td('Event', d.eventType),
        td('Reason', d.reason),
        td('Deliveries', String(d.dequeueCount), 'num'),
        td('Dead since', dateTime(d.deadAt)),
        td('', h('button', { type: 'button', 'data-replay': d.id, onclick: () => replay(d) }, 'Replay'))));
      replace(dead,
        h('h2', { id: 'dl-h' }, `Dead letters (${letters.list.length})`),
        h('p', { class: 'note' }, 'Work items whose execution kept failing, set aside. Replaying puts one back on its queue with a fresh count; one that can no longer reach its execution is dropped instead.'),
        letters.supported
          ? table('dead-letter-table', [['ID'], ['Queue'], ['Instance'], ['Event'], ['Reason'], ['Deliveries', 'num'], ['Dead since'], ['Action']], rows, 'No dead letters.')
          : h('p', { class: 'note' }, 'This backend has no dead-letter queue.'));
    });
  }

  async function replay(d) {
    const ok = await confirmAction({
      title: `Replay dead letter ${d.id}?`,
      message: `Its ${d.eventType} message for ${d.instanceId || 'no instance'} goes back on the ${d.queue} queue with a fresh count. If its execution is gone or already answered, the worker drops it instead.`,
      confirmLabel: 'Replay',
    });
    if (!ok) return;
    message(dlMsg, '', '');
    try {
      const res = await api('POST', `/api/deadletters/${encodeURIComponent(d.id)}/replay`);
      message(dlMsg, 'ok', `Dead letter ${d.id} replayed: its message is back on its queue (HTTP ${res.status}).`);
    } catch (e) {
      message(dlMsg, 'error', `Dead letter ${d.id} not replayed: ${e.message}`);
    }
    // The operator's own action: read the list now rather than at the
    // feed's next hub read.
    try {
      const { data } = await api('GET', '/api/deadletters');
      letters = { list: data.deadLetters || [], at: new Date(), supported: true };
      renderDead();
    } catch (e) {
      if (e.status !== 401) message(dlMsg, 'error', `Could not read the dead letters: ${e.message}`);
    }
  }

  const onChange = (ev) => {
    if (ev.detail.hub || ev.detail.snapshot) render();
  };
  app.live.addEventListener('change', onChange);
  app.live.follow(['hub']);
  render();
  return () => app.live.removeEventListener('change', onChange);
}
