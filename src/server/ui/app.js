// anomalyd's console: three views (streams, a stream, incidents) over the
// documented API. Every URL is relative to the console's own (served at
// <prefix>/ui/), so it works behind a reverse proxy's path prefix. The token,
// when the service needs one, lives in this tab's sessionStorage and travels as
// a header (and, for the WebSocket, as a subprotocol), never in a URL.
'use strict';

const API = new URL('../', location.href);
const TOKEN_KEY = 'anomalyd-token';
const REFRESH_MS = 5000;
const PAGE = 50;

let timer = null;
let socket = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// An element: h('td', {class: 'num'}, 'text', child, ...). Text is always text.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const t = token();
  if (t) headers['Authorization'] = 'Bearer ' + t;
  const resp = await fetch(new URL(path, API), Object.assign({}, opts, {headers}));
  if (resp.status === 401) {
    showLogin(t ? 'That token was not accepted.' : '');
    throw new Unauthorized();
  }
  if (!resp.ok) {
    let msg = resp.status + ' ' + resp.statusText;
    try { msg = (await resp.json()).error.message || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

const json = async (path, opts) => (await api(path, opts)).json();

function showLogin(message) {
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  document.getElementById('token').focus();
}

function signedIn() {
  const who = document.getElementById('who');
  who.replaceChildren();
  if (token()) {
    who.append('signed in · ', h('a', {onclick: () => { sessionStorage.removeItem(TOKEN_KEY); route(); }}, 'sign out'));
  }
}

const fmtScore = (s) => (s === null || s === undefined ? '—' : s.toFixed(3));
const fmtNum = (x) => (x === null || x === undefined ? '—' : Number(x).toPrecision(4));
const streamLink = (id) => h('a', {href: '#/stream/' + encodeURIComponent(id)}, id);

function badge(text, cls) {
  return h('span', {class: 'badge ' + (cls || text)}, text);
}

function stateBadge(s) {
  if (s.phase === 'warmup') return badge('warming up', 'warmup');
  return s.anomalous ? badge('anomalous') : badge('normal');
}

// A sparkline of scores in [0, 1]; a gap where a reading was not judged.
function sparkline(scores) {
  const w = 120, hgt = 22, n = scores.length;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', w); svg.setAttribute('height', hgt); svg.setAttribute('class', 'spark');
  let d = '', pen = false;
  scores.forEach((s, i) => {
    if (s === null) { pen = false; return; }
    const x = n > 1 ? (i / (n - 1)) * (w - 2) + 1 : w / 2;
    const y = hgt - 1 - s * (hgt - 2);
    d += (pen ? 'L' : 'M') + x.toFixed(1) + ',' + y.toFixed(1);
    pen = true;
  });
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  line.setAttribute('d', d); line.setAttribute('fill', 'none');
  line.setAttribute('stroke', scores.some((s) => s !== null && s >= 0.5) ? '#de2d26' : '#6a51a3');
  svg.append(line);
  return svg;
}

function every(fn) {
  clearInterval(timer);
  timer = setInterval(() => fn().catch(() => {}), REFRESH_MS);
}

// --- Streams -------------------------------------------------------------

const list = {q: '', after: null, back: []};

async function streamsView(main) {
  const search = h('input', {id: 'search', type: 'search', placeholder: 'search: text, or a glob like web-*', value: list.q});
  const total = h('span', {class: 'muted', id: 'total'});
  const prev = h('button', {class: 'secondary', id: 'prev'}, '‹ prev');
  const next = h('button', {class: 'secondary', id: 'next'}, 'next ›');
  const body = h('tbody', {id: 'streams'});
  main.replaceChildren(
    h('h1', {}, 'Streams'),
    h('div', {class: 'toolbar'}, search, total, prev, next),
    h('table', {}, h('thead', {}, h('tr', {}, ['Stream', 'Phase', 'State', 'Score', 'Model', 'Incident', 'Recent scores'].map((t) => h('th', {}, t)))), body),
  );
  let nextAfter = null;
  async function load() {
    const p = new URLSearchParams({detail: 'true', limit: PAGE});
    if (list.q) p.set('q', list.q);
    if (list.after) p.set('after', list.after);
    const page = await json('v1/streams?' + p);
    nextAfter = page.next_after;
    total.textContent = page.total + (page.total === 1 ? ' stream' : ' streams');
    prev.disabled = list.back.length === 0;
    next.disabled = !nextAfter;
    body.replaceChildren(...page.streams.map((s) => h('tr', {'data-stream': s.stream},
      h('td', {}, streamLink(s.stream)),
      h('td', {}, badge(s.phase)),
      h('td', {}, stateBadge(s)),
      h('td', {class: 'num'}, fmtScore(s.last_score)),
      h('td', {class: 'num'}, s.model_version || '—'),
      h('td', {}, s.incident ? badge('#' + s.incident, 'opened') : ''),
      h('td', {}, sparkline(s.scores)),
    )));
    if (page.streams.length === 0) body.append(h('tr', {}, h('td', {colspan: 7, class: 'muted'}, list.q ? 'No stream matches.' : 'No streams yet: POST readings to /v1/streams/{id}/readings.')));
  }
  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { list.q = search.value.trim(); list.after = null; list.back = []; load(); }, 250);
  });
  next.addEventListener('click', () => { list.back.push(list.after); list.after = nextAfter; load(); });
  prev.addEventListener('click', () => { list.after = list.back.pop() || null; load(); });
  await load();
  every(load);
}

// --- A stream ------------------------------------------------------------

function facts(pairs) {
  return h('dl', {class: 'facts'}, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function topFeatures(list) {
  return (list || []).map((f) => 'feature ' + f.feature + ' ' + Math.round(f.share * 100) + '%').join(', ') || '—';
}

function alertRows(alerts, withStream) {
  return alerts.map((a) => h('tr', {'data-seq': a.seq, class: a.fresh ? 'new' : null},
    h('td', {class: 'num'}, a.seq),
    h('td', {}, a.timestamp),
    h('td', {}, badge(a.kind)),
    withStream ? h('td', {}, streamLink(a.stream)) : null,
    h('td', {class: 'num'}, '#' + a.incident),
    h('td', {class: 'num'}, fmtScore(a.score)),
    h('td', {}, topFeatures(a.top_features)),
    h('td', {}, a.resolution || (a.kind === 'opened' ? 'open since ' + a.start : '')),
  ));
}

const ALERT_HEAD = (withStream) => h('thead', {}, h('tr', {},
  ['Seq', 'Time', 'Event', withStream ? 'Stream' : null, 'Incident', 'Score', 'Features that drove it', 'Resolution'].filter(Boolean).map((t) => h('th', {}, t))));

async function streamView(main, id) {
  const enc = encodeURIComponent(id);
  const head = h('div', {class: 'toolbar'});
  const chart = h('div', {class: 'chart', id: 'chart'});
  const info = h('div');
  const model = h('div');
  const incidents = h('tbody', {id: 'stream-incidents'});
  const config = h('pre', {id: 'config'});
  const said = h('span', {class: 'muted', id: 'action-result'});
  const action = (name, path, danger, confirmText) => h('button', {class: danger ? 'danger' : 'secondary', 'data-action': name, onclick: async () => {
    if (confirmText && !confirm(confirmText)) return;
    try {
      const r = await json('v1/streams/' + enc + '/' + path, {method: 'POST'});
      said.textContent = name + ': ' + JSON.stringify(r);
      await load();
    } catch (e) { if (!(e instanceof Unauthorized)) said.textContent = name + ' failed: ' + e.message; }
  }}, name);
  main.replaceChildren(
    h('p', {}, h('a', {href: '#/'}, '‹ streams')),
    h('h1', {}, id), head,
    h('div', {class: 'toolbar'}, action('Retrain', 'retrain'), action('Accept', 'accept', false, 'Accept this stream\'s recent behaviour as normal?'),
      action('Reset', 'reset', true, 'Start this stream over? Its model and learnt behaviour are discarded.'), said),
    chart,
    h('div', {class: 'cols'}, h('div', {}, h('h2', {}, 'Now'), info), h('div', {}, h('h2', {}, 'Model'), model)),
    h('h2', {}, 'Incidents'), h('table', {}, ALERT_HEAD(false), incidents),
    h('h2', {}, 'Config'), config,
  );
  async function load() {
    const [s, svg, alerts] = await Promise.all([
      json('v1/streams/' + enc),
      api('v1/streams/' + enc + '/chart.svg').then((r) => r.text()),
      json('v1/alerts?newest=true&limit=50&stream=' + enc),
    ]);
    head.replaceChildren(badge(s.phase), stateBadge(s), s.incident ? badge('incident #' + s.incident.id + ' open', 'opened') : null);
    // The chart is SVG the service drew, every text in it escaped there.
    chart.innerHTML = svg;
    info.replaceChildren(facts([
      ['last reading', s.last_timestamp || '—'],
      ['last score', fmtScore(s.last_score)],
      ['threshold', s.threshold],
      ['readings seen', s.readings_seen],
      ['still warming up for', s.readings_needed ? s.readings_needed + ' readings' : undefined],
      ['features', s.n_features ?? '—'],
      ['open incident', s.incident ? '#' + s.incident.id + ' since ' + s.incident.start + ', peak ' + fmtScore(s.incident.peak_score) + ', ' + topFeatures(s.incident.top_features) : 'none'],
    ]));
    const m = s.model;
    model.replaceChildren(m ? facts([
      ['version', m.version], ['trained at', m.trained_at], ['network', m.cell + ' × ' + m.layers + ', hidden ' + m.hidden + (m.bidirectional ? ', bidirectional' : '')],
      ['ensemble', m.members + ' × ' + m.parameters + ' parameters'], ['train loss', fmtNum(m.train_loss)], ['validation loss', fmtNum(m.val_loss)],
      ['failed training jobs', s.failed_training_jobs],
    ]) : h('p', {class: 'muted'}, s.phase === 'warmup' ? 'Warming up: not judged yet.' : 'No model yet: the baselines judge until the first one is trained.'));
    incidents.replaceChildren(...alertRows(alerts.alerts, false));
    if (!alerts.alerts.length) incidents.append(h('tr', {}, h('td', {colspan: 7, class: 'muted'}, 'No incidents.')));
    config.textContent = JSON.stringify(s.config, null, 2);
  }
  try { await load(); } catch (e) {
    if (e instanceof Unauthorized) return;
    main.replaceChildren(h('p', {}, h('a', {href: '#/'}, '‹ streams')), h('p', {class: 'error'}, id + ': ' + e.message));
    return;
  }
  every(load);
}

// --- Incidents -----------------------------------------------------------

function closeSocket() {
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
}

function b64url(s) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(s))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

async function incidentsView(main) {
  const filter = h('input', {id: 'filter', type: 'search', placeholder: 'streams (glob, e.g. web-*)'});
  const kind = h('select', {id: 'kind'}, h('option', {value: ''}, 'opened and resolved'), h('option', {value: 'opened'}, 'opened'), h('option', {value: 'resolved'}, 'resolved'));
  const live = h('span', {id: 'live', class: 'off'}, '○ connecting');
  const body = h('tbody', {id: 'incidents'});
  main.replaceChildren(h('h1', {}, 'Incidents'), h('div', {class: 'toolbar'}, filter, kind, live), h('table', {}, ALERT_HEAD(true), body));
  let alerts = [];
  let latest = 0;
  const shown = () => alerts.filter((a) => !kind.value || a.kind === kind.value);
  const draw = () => {
    body.replaceChildren(...alertRows(shown(), true));
    if (!shown().length) body.append(h('tr', {}, h('td', {colspan: 8, class: 'muted'}, 'No incidents.')));
  };
  async function load() {
    const p = new URLSearchParams({newest: 'true', limit: 200});
    if (filter.value.trim()) p.set('stream', filter.value.trim());
    const page = await json('v1/alerts?' + p);
    alerts = page.alerts;
    latest = page.latest_seq;
    draw();
  }
  function connect() {
    closeSocket();
    const url = new URL('v1/alerts/ws', API);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const t = token();
    const ws = new WebSocket(url, t ? ['anomalyd', 'bearer.' + b64url(t)] : ['anomalyd']);
    socket = ws;
    ws.onopen = () => {
      live.textContent = '● live'; live.className = 'on';
      const glob = filter.value.trim();
      ws.send(JSON.stringify({type: 'subscribe', streams: glob ? [glob] : [], resume_from: latest}));
    };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'alert' && !alerts.some((a) => a.seq === m.seq)) {
        m.fresh = true;
        alerts.unshift(m);
        alerts.length = Math.min(alerts.length, 500);
        latest = Math.max(latest, m.seq);
        draw();
      } else if (m.type === 'lagged') {
        load().catch(() => {});
      }
    };
    ws.onclose = () => {
      live.textContent = '○ reconnecting'; live.className = 'off';
      setTimeout(() => { if (socket === ws) load().then(connect).catch(() => {}); }, 2000);
    };
  }
  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => load().then(connect).catch(() => {}), 300);
  });
  kind.addEventListener('change', draw);
  await load();
  connect();
}

// --- Routing -------------------------------------------------------------

async function route() {
  clearInterval(timer);
  closeSocket();
  signedIn();
  const main = document.getElementById('main');
  const hash = location.hash || '#/';
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active',
    (a.dataset.nav === 'incidents') === hash.startsWith('#/incidents')));
  try {
    if (hash.startsWith('#/stream/')) await streamView(main, decodeURIComponent(hash.slice('#/stream/'.length)));
    else if (hash.startsWith('#/incidents')) await incidentsView(main);
    else await streamsView(main);
  } catch (e) {
    if (!(e instanceof Unauthorized)) main.replaceChildren(h('p', {class: 'error'}, e.message));
  }
}

document.getElementById('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById('token').value);
  document.getElementById('token').value = '';
  document.getElementById('login').hidden = true;
  route();
});
window.addEventListener('hashchange', route);
route();
