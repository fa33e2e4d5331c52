// The dashboard's entry point: the router, the live feed's state in the
// header, and the API key prompt.

import { getKey, setKey } from './api.js';
import { Live } from './live.js';
import { h, replace } from './ui.js';
import { listPage } from './pages/list.js';
import { detailPage } from './pages/detail.js';
import { fleetPage } from './pages/fleet.js';
import { hubPage } from './pages/hub.js';

const main = document.getElementById('main');
const conn = document.getElementById('conn');
const connText = document.getElementById('conn-text');
const banner = document.getElementById('banner');
const forget = document.getElementById('forget-key');

const routes = [
  [/^\/missions$/, (m, p) => listPage(main, app, 'missions', p), 'missions'],
  [/^\/missions\/(.+)$/, (m) => detailPage(main, app, 'missions', decodeURIComponent(m[1])), 'missions'],
  [/^\/instances$/, (m, p) => listPage(main, app, 'instances', p), 'instances'],
  [/^\/instances\/(.+)$/, (m) => detailPage(main, app, 'instances', decodeURIComponent(m[1])), 'instances'],
  [/^\/fleet(?:\/(.+))?$/, (m) => fleetPage(main, app, m[1] ? decodeURIComponent(m[1]) : ''), 'fleet'],
  [/^\/hub$/, () => hubPage(main, app), 'hub'],
];

const app = {
  live: new Live(),
  cleanup: null,
  authShown: false,

  go(hash) {
    if (location.hash === hash) this.render();
    else location.hash = hash;
  },

  render() {
    if (this.cleanup) this.cleanup();
    this.cleanup = null;
    this.authShown = false;
    const raw = location.hash.replace(/^#/, '') || '/missions';
    const [path, query] = raw.split('?');
    const params = new URLSearchParams(query || '');
    for (const [re, page, nav] of routes) {
      const m = path.match(re);
      if (!m) continue;
      for (const a of document.querySelectorAll('[data-nav]')) {
        if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      this.cleanup = page(m, params) || null;
      const h1 = main.querySelector('h1');
      if (h1 && this.navigated) h1.focus();
      this.navigated = true;
      document.title = `${h1 ? h1.textContent + ' · ' : ''}dronehub`;
      return;
    }
    replace(main, h('h1', { tabindex: '-1' }, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/missions' }, 'Go to the missions.')));
  },

  // askForKey replaces the page with the API key prompt.
  askForKey(detail, hadKey) {
    if (this.authShown) return;
    this.authShown = true;
    if (this.cleanup) this.cleanup();
    this.cleanup = null;
    this.live.stop();
    const input = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', 'aria-describedby': 'key-help' });
    const problem = hadKey
      ? h('p', { class: 'msg error', role: 'alert', id: 'key-error' },
        'The worker refused this API key (HTTP 401). Check it and enter it again. The worker said: ', detail || 'missing or wrong API key')
      : h('p', { id: 'key-error', role: 'status' }, 'This worker needs an API key for its data and actions.');
    replace(main,
      h('h1', { tabindex: '-1' }, 'API key'),
      problem,
      h('form', { class: 'keyform', onsubmit: (e) => {
        e.preventDefault();
        setKey(input.value.trim());
        this.authShown = false;
        updateForget();
        this.live.restart();
        this.render();
      } },
      h('div', { class: 'field' }, h('label', { for: 'api-key' }, 'API key'), input),
      h('p', { class: 'note', id: 'key-help' }, 'It is kept in this browser tab only (sessionStorage) and sent as "Authorization: Bearer KEY". Operators get keys from whoever runs the workers (--api-keys-file).'),
      h('button', { type: 'submit', class: 'primary' }, 'Use this key')));
    input.focus();
  },
};

function updateForget() {
  forget.hidden = !getKey();
}

app.live.addEventListener('state', (ev) => {
  const { state, text } = ev.detail;
  // Only real changes: the region is announced by screen readers.
  const shown = state === 'live' ? 'Live' : text;
  if (conn.dataset.state !== state) conn.dataset.state = state;
  if (connText.textContent !== shown) connText.textContent = shown;
  if (state === 'problem') {
    const msg = `The task hub is not answering the live feed: ${text}`;
    if (banner.textContent !== msg) banner.textContent = msg;
    banner.hidden = false;
  } else if (state === 'live') {
    banner.hidden = true;
  }
});

window.addEventListener('dronehub:auth', (ev) => app.askForKey(ev.detail.detail, ev.detail.hadKey));
window.addEventListener('hashchange', () => app.render());
forget.addEventListener('click', () => {
  setKey('');
  updateForget();
  app.live.restart();
  app.render();
});
document.getElementById('skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});

updateForget();
app.render();
