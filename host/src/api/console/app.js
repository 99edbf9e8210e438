// The eventfold console: plain JavaScript, no dependency, no build step.
// The server serves it at /ui from its own binary (host/src/api/console.rs);
// what it shows and how to use it is in docs/console.md. Everything it shows
// comes from the HTTP API (docs/api.md), like any other client.
//
// Sections, in order: the API client (token, JSON, errors) · Server-Sent
// Events read with fetch() · small helpers · plugins · the event browser ·
// the append form · the appends-per-second sparkline · start.

const PAGE = 50; // events per page of the event browser
const LIVE_ROWS = 200; // rows the browser keeps while following live
const RATE_SAMPLES = 60; // seconds of history in the sparkline
const TOKEN_KEY = 'eventfold-token';

// ---------------------------------------------------------------------------
// The API client. With --token the server answers 401 until the request
// carries `Authorization: Bearer <token>`: the console then asks for the
// token once, keeps it in sessionStorage (this tab only) and retries. The
// token is only ever sent in that header, never in a URL.

/** An error answer of the API: `{"error": {"code", "message"}}`. */
class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? error.message : `the server answered ${status}`);
    this.status = status;
    this.code = error ? error.code : null;
  }
}

/** fetch() with the token; asks for a token on 401 and tries again. */
async function request(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = new Headers(options.headers || {});
  if (token) headers.set('Authorization', `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status !== 401) return response;
  // Another request may have set a new token meanwhile: then just retry.
  if (sessionStorage.getItem(TOKEN_KEY) === token) {
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(token ? 'The server refused that token.' : null);
  }
  return request(path, options);
}

/** A request whose answer is JSON; throws ApiError on an error status. */
async function api(path, options) {
  const response = await request(path, options);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

let tokenWaiters = null;

/** Shows the token form; resolves once a token was entered. */
function askToken(message) {
  if (!tokenWaiters) {
    tokenWaiters = [];
    $('#login-error').textContent = message || '';
    $('#login-error').hidden = !message;
    $('#login').showModal();
    $('#token').focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function setUpLogin() {
  // Escape must not close the form: nothing works without the token.
  $('#login').addEventListener('cancel', (event) => event.preventDefault());
  $('#login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#token').value = '';
    $('#login').close();
    const waiters = tokenWaiters || [];
    tokenWaiters = null;
    waiters.forEach((resolve) => resolve());
  });
}

// ---------------------------------------------------------------------------
// Server-Sent Events. EventSource cannot send an Authorization header, so
// feeds are read with fetch() and parsed from the response's stream.

/**
 * Follows an SSE route, calling onMessage({event, data, id}) per message.
 * Reconnects after a drop (with Last-Event-ID when the route sends ids)
 * until the returned function is called. onState gets 'open' or 'down'.
 */
function follow(path, onMessage, onState = () => {}) {
  const controller = new AbortController();
  let lastId = null;
  let delay = 500;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        const headers = { Accept: 'text/event-stream' };
        if (lastId !== null) headers['Last-Event-ID'] = lastId;
        const response = await request(path, { headers, signal: controller.signal });
        if (!response.ok)
          throw new ApiError(response.status, await response.json().catch(() => null));
        onState('open');
        delay = 500;
        for await (const message of sseMessages(response.body)) {
          if (message.id !== null) lastId = message.id;
          onMessage(message);
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        console.warn(`${path}: ${error.message}`);
      }
      onState('down');
      await sleep(delay);
      delay = Math.min(delay * 2, 10_000);
    }
  })();
  return () => controller.abort();
}

/** The messages of an SSE body, parsed as the HTML standard says (the
 * server ends lines with \n; comments, the keep-alives, are skipped). */
async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let message = { event: 'message', data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (message.data.length) yield { ...message, data: message.data.join('\n') };
        message = { event: 'message', data: [], id: null };
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') message.data.push(text);
        else if (field === 'event') message.event = text;
        else if (field === 'id') message.id = text;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Small helpers.

const $ = (selector, root = document) => root.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const int = (n) => Number(n).toLocaleString('en-US');
const rate = (n) => (n >= 100 ? int(Math.round(n)) : Number(n).toFixed(1));
const enc = encodeURIComponent;

/** An element with attributes (`on…` adds a listener) and children. Text
 * is always set as text, never parsed as HTML. */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== false && value != null) node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.flat(Infinity).filter((child) => child != null && child !== false));
  return node;
}

/** "4 s", "3 min 12 s", "2 h 5 min". */
function duration(secs) {
  const s = Math.round(secs);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A short note at the bottom right: kind is 'ok', 'bad' or ''. */
function toast(text, kind = '') {
  const note = el('div', { class: `toast ${kind}`, role: 'status' }, text);
  $('#toasts').append(note);
  setTimeout(() => note.remove(), kind === 'bad' ? 9000 : 5000);
}

/** Shows a mark once the first plugins and the first page of events are
 * on screen: `performance.getEntriesByName('console-ready')` times a load. */
const ready = new Set();
function loaded(part) {
  ready.add(part);
  if (ready.size === 2 && !document.documentElement.dataset.ready) {
    document.documentElement.dataset.ready = 'true';
    performance.mark('console-ready');
  }
}

// ---------------------------------------------------------------------------
// Plugins: one <tbody> per plugin, built once and updated in place from the
// live feed (GET /plugins/live), so that a button is never replaced under
// the pointer.

const STATES = {
  running: ['●', 'running'],
  'catching-up': ['◔', 'catching up'],
  replaying: ['↻', 'replaying'],
  paused: ['❚❚', 'paused'],
  failed: ['✖', 'failed'],
  compiling: ['⚙', 'compiling'],
};
const ACTIONS = {
  replay: ['Replay', 'Rebuild from position 0 beside the serving state, then swap'],
  pause: ['Pause', 'Stop handling events'],
  resume: ['Resume', 'Go on after a pause, or retry a failed plugin now'],
  skip: ['Skip', 'Park the event this plugin is stuck on and go on past it'],
};
const pluginViews = new Map();

function renderPlugins({ plugins, head }) {
  setHead(head);
  const table = $('#plugins');
  plugins.forEach((status, i) => {
    let view = pluginViews.get(status.name);
    if (!view) {
      view = pluginView(status.name);
      pluginViews.set(status.name, view);
    }
    if (table.tBodies[i] !== view.body) table.insertBefore(view.body, table.tBodies[i] || null);
    updatePlugin(view, status);
  });
  const names = new Set(plugins.map((p) => p.name));
  for (const [name, view] of pluginViews) {
    if (!names.has(name)) {
      view.body.remove();
      pluginViews.delete(name);
    }
  }
  $('#no-plugins').hidden = plugins.length > 0;
  renderAlert(plugins.filter((p) => p.state === 'failed'));
  loaded('plugins');
}

/** The rows of one plugin: its figures, its progress and delivery line,
 * and its details (opened by a click on its name). */
function pluginView(name) {
  const field = (name, cls = '') => el('td', { class: cls, 'data-field': name });
  const view = { name, open: false, cells: {}, buttons: {}, counts: '' };
  for (const f of [
    'state',
    'generation',
    'checkpoint',
    'head',
    'lag',
    'events_per_sec',
    'last_error',
  ]) {
    view.cells[f] = field(f, ['state', 'last_error'].includes(f) ? f : 'num');
  }
  view.cells.kind = el('span', { class: 'kind', 'data-field': 'kind' });
  const title = el(
    'button',
    { class: 'link', type: 'button', title: 'Show details', onclick: () => toggleDetails(view) },
    name,
  );
  const actions = el('td', { class: 'actions' });
  for (const [action, [label, help]] of Object.entries(ACTIONS)) {
    view.buttons[action] = el(
      'button',
      {
        type: 'button',
        'data-action': action,
        title: help,
        class: action === 'skip' ? 'danger' : '',
        onclick: () => act(name, action),
      },
      label,
    );
    actions.append(view.buttons[action]);
  }
  const c = view.cells;
  view.main = el(
    'tr',
    { class: 'main' },
    el('td', { class: 'name' }, title, c.kind),
    c.state,
    c.generation,
    c.checkpoint,
    c.head,
    c.lag,
    c.events_per_sec,
    c.last_error,
    actions,
  );
  view.progress = el('div', { class: 'progress-line', hidden: true });
  view.delivery = el('div', { class: 'delivery', hidden: true });
  view.extra = el(
    'tr',
    { class: 'extra', hidden: true },
    el('td', { colspan: 9 }, view.progress, view.delivery),
  );
  view.detailsCell = el('td', { colspan: 9 });
  view.details = el('tr', { class: 'details', hidden: true }, view.detailsCell);
  view.body = el(
    'tbody',
    { class: 'plugin', 'data-plugin': name },
    view.main,
    view.extra,
    view.details,
  );
  return view;
}

function updatePlugin(view, s) {
  const [icon, label] = STATES[s.state] || ['?', s.state];
  view.body.dataset.state = s.state;
  view.status = s;
  const c = view.cells;
  c.kind.textContent = s.kind || '';
  c.state.replaceChildren(el('span', { class: `badge ${s.state}` }, `${icon} ${label}`));
  c.generation.textContent = s.generation;
  c.checkpoint.textContent = int(s.checkpoint);
  c.head.textContent = int(s.head);
  c.lag.textContent = int(s.lag);
  c.events_per_sec.textContent = rate(s.events_per_sec);
  c.last_error.replaceChildren(...lastError(s.last_error));
  const b = view.buttons;
  const stopped = s.state === 'paused' || s.state === 'failed';
  b.replay.disabled = s.state === 'compiling';
  b.pause.hidden = stopped;
  b.pause.disabled = s.state === 'compiling';
  b.resume.hidden = !stopped;
  b.skip.hidden = s.state !== 'failed';
  const progress = updateProgress(view.progress, s);
  const delivery = updateDelivery(view.delivery, s.notifications);
  view.extra.hidden = !(progress || delivery);
  // The details follow what they list: reload them when its counts move.
  const counts = `${s.parked}/${s.notifications ? s.notifications.dead_letters : ''}`;
  if (view.open && counts !== view.counts) loadDetails(view);
  view.counts = counts;
}

function lastError(error) {
  if (!error) return [];
  const where = `position ${int(error.position)} · ${error.attempts} attempt${error.attempts === 1 ? '' : 's'}`;
  return [
    el('span', { class: 'error-text', title: `${error.message}\n${error.at}` }, error.message),
    el('small', {}, where),
  ];
}

/** The rebuild's progress bar (or a catch-up's); false when there is none. */
function updateProgress(line, s) {
  const head = Math.max(s.head, 1);
  let bar = null;
  if (s.rebuild) {
    const r = s.rebuild;
    const eta = r.eta_secs == null ? 'ETA –' : `ETA ${duration(r.eta_secs)}`;
    bar = {
      what: `rebuilding generation ${r.generation}`,
      at: r.checkpoint,
      eps: r.events_per_sec,
      eta,
      generation: r.generation,
    };
  } else if (s.state === 'catching-up' && s.lag > 0) {
    const eta = s.events_per_sec > 0 ? `ETA ${duration(s.lag / s.events_per_sec)}` : 'ETA –';
    bar = {
      what: 'catching up',
      at: s.checkpoint,
      eps: s.events_per_sec,
      eta,
      generation: s.generation,
    };
  }
  line.hidden = !bar;
  if (!bar) {
    delete line.dataset.generation;
    return false;
  }
  line.dataset.generation = bar.generation;
  const percent = Math.min(100, Math.floor((bar.at / head) * 100));
  line.replaceChildren(
    el('span', { class: 'what' }, bar.what),
    el('progress', { max: head, value: Math.min(bar.at, head) }),
    el(
      'span',
      {},
      `${int(bar.at)} of ${int(head)} (${percent} %) · ${rate(bar.eps)} events/s · ${bar.eta}`,
    ),
  );
  return true;
}

/** A notifier's delivery figures; false for a projection. */
function updateDelivery(line, n) {
  line.hidden = !n;
  if (!n) return false;
  const stat = (name, value, label, bad) =>
    el(
      'span',
      { class: `stat${bad ? ' bad' : ''}`, 'data-stat': name },
      el('b', {}, value),
      ` ${label}`,
    );
  line.replaceChildren(
    el('span', { class: 'what' }, 'delivery'),
    stat('pending', int(n.pending), 'pending', false),
    stat('delivered', int(n.delivered), 'delivered', false),
    stat('failed_attempts', int(n.failed_attempts), 'failed attempts', n.failed_attempts > 0),
    stat('dead_lettered', int(n.dead_lettered), 'dead-lettered', n.dead_letters > 0),
    stat(
      'oldest_pending_age',
      n.oldest_pending_age_secs == null ? '–' : duration(n.oldest_pending_age_secs),
      'oldest pending',
      false,
    ),
    el('span', { class: 'muted' }, n.webhook ? `→ ${n.webhook.url}` : 'no webhook set'),
  );
  return true;
}

/** The red banner over everything while any plugin is failed. */
function renderAlert(failed) {
  const alert = $('#alert');
  alert.hidden = failed.length === 0;
  document.title = failed.length
    ? `✖ ${failed.length} failed · eventfold console`
    : 'eventfold console';
  if (!failed.length) return;
  const names = failed.map((p) => {
    const error = p.last_error;
    return error ? `${p.name} (at position ${int(error.position)}: ${error.message})` : p.name;
  });
  const count = failed.length === 1 ? '1 plugin has' : `${failed.length} plugins have`;
  alert.textContent =
    `✖ ${count} failed and stopped: ${names.join('; ')}. ` +
    'Resume retries it; Skip parks the event and goes on.';
}

async function act(name, action) {
  try {
    const answer = await api(`/plugins/${enc(name)}/${action}`, { method: 'POST' });
    const said = {
      replay: () => `${name}: rebuilding generation ${answer.replay && answer.replay.generation}`,
      pause: () => `${name} paused`,
      resume: () => `${name} resumed`,
      skip: () => `${name}: the event at position ${int(answer.skipped)} is parked`,
    };
    toast(said[action](), 'ok');
  } catch (error) {
    toast(`${action} ${name}: ${error.message}`, 'bad');
  }
}

function toggleDetails(view) {
  view.open = !view.open;
  view.details.hidden = !view.open;
  view.main.classList.toggle('open', view.open);
  if (view.open) loadDetails(view);
}

/** Plugin facts, its parked events and, for a notifier, its dead letters. */
async function loadDetails(view) {
  const s = view.status;
  const name = view.name;
  try {
    const parked = (await api(`/plugins/${enc(name)}/parked`)).parked;
    const dead = s.notifications ? await api(`/plugins/${enc(name)}/dead-letters?limit=100`) : null;
    view.detailsCell.replaceChildren(
      facts(s),
      list(
        'Parked events',
        'parked',
        ['position', 'error'],
        parked.map((p) => [int(p.position), p.error]),
        'None. Skip parks the event a failed plugin is stuck on.',
      ),
      dead &&
        list(
          'Dead letters',
          'dead-letters',
          ['id', 'key', 'attempts', 'last error', 'at', ''],
          dead.dead_letters.map((d) => deadLetterRow(name, d)),
          'None: every notification got through or is still being tried.',
        ),
    );
  } catch (error) {
    view.detailsCell.replaceChildren(el('p', { class: 'error-text' }, error.message));
  }
}

function facts(s) {
  const subscription = [
    ...s.categories.map((c) => `category ${c}`),
    ...s.event_types.map((t) => `type ${t}`),
  ];
  const pairs = [
    ['version', s.version || '–'],
    ['WIT', `${s.wit || '–'} (${s.encoding || '–'})`],
    ['code', s.hash ? `${s.hash.slice(0, 12)}… (${s.compiled}, ${int(s.compile_ms)} ms)` : '–'],
    ['subscribes to', subscription.length ? subscription.join(', ') : 'every event'],
    ['parked', int(s.parked)],
  ];
  return el(
    'dl',
    { class: 'facts' },
    pairs.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]),
  );
}

function deadLetterRow(name, d) {
  const retry = el(
    'button',
    {
      type: 'button',
      'data-action': 'retry',
      disabled: d.retrying,
      onclick: async () => {
        try {
          await api(`/plugins/${enc(name)}/dead-letters/${d.id}/retry`, { method: 'POST' });
          toast(`${name}: dead letter ${d.id} sent again`, 'ok');
          retry.disabled = true;
          retry.textContent = 'retrying';
        } catch (error) {
          toast(`retry ${d.id}: ${error.message}`, 'bad');
        }
      },
    },
    d.retrying ? 'retrying' : 'Retry',
  );
  return [
    d.id,
    d.notification.key,
    d.attempts,
    d.error,
    d.at.slice(0, 19).replace('T', ' '),
    retry,
  ];
}

/** A titled table of rows (cells are text or elements), or a note. */
function list(title, kind, headings, rows, empty) {
  const table = rows.length
    ? el(
        'table',
        { class: 'grid small' },
        el(
          'thead',
          {},
          el(
            'tr',
            {},
            headings.map((h) => el('th', {}, h)),
          ),
        ),
        el(
          'tbody',
          {},
          rows.map((cells) =>
            el(
              'tr',
              {},
              cells.map((c) => el('td', {}, c)),
            ),
          ),
        ),
      )
    : el('p', { class: 'muted' }, empty);
  return el(
    'div',
    { class: 'list', 'data-list': kind },
    el('h3', {}, `${title} (${rows.length})`),
    table,
  );
}

// Deploy by drag-and-drop (or the file chooser): PUT /plugins/{name}, the
// name taken from the file's: stem, lower case, `_` → `-`.

function pluginName(fileName) {
  return fileName
    .replace(/\.[^.]*$/, '')
    .toLowerCase()
    .replaceAll('_', '-');
}

async function deploy(file) {
  const name = pluginName(file.name);
  toast(`deploying ${name}…`);
  try {
    const answer = await api(`/plugins/${enc(name)}`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/wasm' },
      body: file,
    });
    const said = {
      created: 'deployed',
      rebuilding: 'new code, rebuilding beside the serving version',
      unchanged: 'unchanged: this code is already serving',
      recorded: 'recorded for the nodes that hold it',
    };
    toast(`${name}: ${said[answer.deploy] || answer.deploy}`, 'ok');
  } catch (error) {
    toast(`deploy ${name}: ${error.message}`, 'bad');
  }
}

function setUpDeploy() {
  const zone = $('#dropzone');
  const input = $('#deploy-file');
  input.addEventListener('change', () => {
    if (input.files[0]) deploy(input.files[0]);
    input.value = '';
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const file = event.dataTransfer.files[0];
    if (file) deploy(file);
  });
  // A file dropped beside the zone must not make the browser open it.
  for (const type of ['dragover', 'drop'])
    window.addEventListener(type, (event) => event.preventDefault());
}

// ---------------------------------------------------------------------------
// The event browser: one page at a time, newest first, never the whole log.
//
// - The log, unfiltered: pages of PAGE positions, starting at the newest.
// - The log with categories or types: read forward from a position (the
//   start of the log unless given), page after page (the API reads forward).
// - One stream: read backward from its newest event.
// On its newest page the browser follows new events live (GET /events/live).

const browser = {
  filter: {},
  from: 1,
  next: null,
  head: 0,
  last: 0,
  starts: [],
  atEnd: true,
  maxShown: 0,
  stopLive: null,
  info: () => '',
};

const isFiltered = () => Boolean(browser.filter.category || browser.filter.type);

function logQuery(extra) {
  const query = new URLSearchParams(extra);
  if (browser.filter.category) query.set('category', browser.filter.category);
  if (browser.filter.type) query.set('type', browser.filter.type);
  return query;
}

async function currentHead() {
  const response = await request('/health');
  const body = await response.json();
  return body.head;
}

/** The newest page of the current view. */
async function showNewest() {
  browser.starts = [];
  if (browser.filter.stream) return showStream(null);
  if (isFiltered()) return showLog(browser.filter.from || 1);
  const head = await currentHead();
  return showLog(Math.max(1, head - PAGE + 1));
}

async function showLog(from) {
  stopLive();
  const page = await api(`/events?${logQuery({ from, limit: PAGE })}`);
  Object.assign(browser, { from, next: page.next, head: page.head, atEnd: page.next > page.head });
  renderEvents(page.events.slice().reverse());
  browser.last = Math.min(page.next - 1, page.head);
  browser.info = () =>
    `${isFiltered() ? 'matches in positions' : 'positions'} ${int(from)}–${int(browser.last)}`;
  if (browser.atEnd) followLog(page.next);
  pager();
}

async function showStream(fromVersion) {
  stopLive();
  const stream = browser.filter.stream;
  const head = await currentHead();
  const query = new URLSearchParams({ direction: 'backward', limit: PAGE });
  if (fromVersion != null) query.set('from', fromVersion);
  let page;
  try {
    page = await api(`/streams/${enc(stream)}?${query}`);
  } catch (error) {
    if (error.code !== 'stream_not_found') throw error;
    page = { events: [], next: null, stream_version: null };
  }
  Object.assign(browser, { from: fromVersion, next: page.next, head, atEnd: fromVersion == null });
  renderEvents(page.events);
  const [newest, oldest] = [page.events[0], page.events.at(-1)];
  const shown = newest
    ? `versions ${int(oldest.version)}–${int(newest.version)} of ${int(page.stream_version)}`
    : 'no events yet';
  browser.info = () => `stream ${stream}: ${shown}`;
  if (browser.atEnd) followStream(stream, head + 1);
  pager();
}

function renderEvents(events) {
  const body = $('#events tbody');
  body.replaceChildren(...events.map(eventRow));
  browser.maxShown = events.reduce((max, e) => Math.max(max, e.position), 0);
  $('#no-events').hidden = events.length > 0;
  loaded('events');
}

function eventRow(e) {
  const compact = JSON.stringify(e.data);
  const data = el(
    'td',
    { class: 'data', 'data-field': 'data', title: 'Click to show it all' },
    el('code', {}, compact),
  );
  data.addEventListener('click', () => {
    const open = data.classList.toggle('open');
    data.firstChild.textContent = open
      ? JSON.stringify({ data: e.data, metadata: e.metadata, id: e.id }, null, 2)
      : compact;
  });
  const stream = el(
    'button',
    {
      type: 'button',
      class: 'link',
      title: `Show stream ${e.stream}`,
      onclick: () => openStream(e.stream),
    },
    e.stream,
  );
  const time = e.recorded_at.slice(11, 23);
  return el(
    'tr',
    { 'data-position': e.position },
    el('td', { class: 'num', 'data-field': 'position' }, int(e.position)),
    el('td', { 'data-field': 'stream' }, stream),
    el('td', { class: 'num' }, e.version),
    el('td', { 'data-field': 'type' }, el('span', { class: 'type' }, e.type)),
    data,
    el('td', { class: 'time', title: e.recorded_at }, time),
  );
}

/** Puts a new event on top, keeping at most LIVE_ROWS rows. */
function addLive(e) {
  if (e.position <= browser.maxShown) return;
  browser.maxShown = e.position;
  const body = $('#events tbody');
  body.prepend(eventRow(e));
  while (body.rows.length > LIVE_ROWS) body.lastElementChild.remove();
  $('#no-events').hidden = true;
  if (browser.filter.stream) {
    browser.info = () =>
      `stream ${e.stream}: ${body.rows.length} newest events, up to version ${int(e.version)}`;
  } else {
    browser.last = e.position;
  }
  pager();
}

function followLog(from) {
  if (!$('#follow').checked) return;
  browser.stopLive = follow(`/events/live?${logQuery({ from })}`, (m) =>
    addLive(JSON.parse(m.data)),
  );
}

/** A stream's new events: the live feed of its category from `from`,
 * those of other streams dropped here. */
function followStream(stream, from) {
  if (!$('#follow').checked) return;
  const dash = stream.indexOf('-');
  const category = dash < 0 ? stream : stream.slice(0, dash);
  browser.stopLive = follow(`/events/live?${new URLSearchParams({ from, category })}`, (m) => {
    const e = JSON.parse(m.data);
    if (e.stream === stream) addLive(e);
  });
}

function stopLive() {
  if (browser.stopLive) browser.stopLive();
  browser.stopLive = null;
}

function pager() {
  const stream = Boolean(browser.filter.stream);
  const filtered = !stream && isFiltered();
  const following = Boolean(browser.stopLive);
  $('#older').disabled = stream
    ? browser.next == null
    : filtered
      ? browser.starts.length === 0
      : browser.from <= 1;
  $('#newer').disabled = browser.atEnd;
  // With a filter the log reads forward, so its first page is the way back.
  $('#newest').textContent = filtered ? '⇤ first' : '⇤ newest';
  $('#newest').disabled = filtered ? browser.starts.length === 0 : browser.atEnd;
  $('#page-info').textContent = `${browser.info()}${following ? ' · following live' : ''}`;
  $('#events-title').textContent = stream
    ? `Stream ${browser.filter.stream}`
    : filtered
      ? 'Events (filtered)'
      : 'Events';
}

async function page(direction) {
  const b = browser;
  if (b.filter.stream) {
    if (direction === 'older') b.starts.push(b.from);
    return showStream(direction === 'older' ? b.next : b.starts.pop());
  }
  if (isFiltered()) {
    if (direction === 'newer') b.starts.push(b.from);
    return showLog(direction === 'newer' ? b.next : b.starts.pop());
  }
  if (direction === 'older') return showLog(Math.max(1, b.from - PAGE));
  const from = b.from + PAGE;
  return from > b.head - PAGE + 1 ? showNewest() : showLog(from);
}

function openStream(stream) {
  const form = $('#filters');
  form.elements.stream.value = stream;
  form.requestSubmit();
}

const showing = (promise) => promise.catch((error) => toast(`events: ${error.message}`, 'bad'));

function setUpBrowser() {
  const form = $('#filters');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = (name) => form.elements[name].value.trim();
    const from = Number.parseInt(value('from'), 10);
    browser.filter = {
      category: value('category'),
      type: value('type'),
      stream: value('stream'),
      from: from > 0 ? from : null,
    };
    showing(showNewest());
  });
  $('#clear-filters').addEventListener('click', () => {
    form.reset();
    form.requestSubmit();
  });
  $('#older').addEventListener('click', () => showing(page('older')));
  $('#newer').addEventListener('click', () => showing(page('newer')));
  $('#newest').addEventListener('click', () => showing(showNewest()));
  $('#follow').addEventListener('change', () => {
    if ($('#follow').checked) showing(showNewest());
    else {
      stopLive();
      pager();
    }
  });
}

// ---------------------------------------------------------------------------
// The append form: POST /streams/{stream}. The data goes to the server as
// typed (after a check that it is JSON), so numbers keep their digits.

function setUpAppend() {
  const form = $('#append');
  const result = $('#append-result');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = (name) => form.elements[name].value.trim();
    const data = value('data') || 'null';
    try {
      JSON.parse(data);
    } catch (error) {
      return show(result, `data is not JSON: ${error.message}`, 'bad');
    }
    const expected = value('expected_version');
    const version = expected
      ? `"expected_version":${/^\d+$/.test(expected) ? expected : JSON.stringify(expected)},`
      : '';
    const body = `{${version}"events":[{"type":${JSON.stringify(value('type'))},"data":${data}}]}`;
    try {
      const answer = await api(`/streams/${enc(value('stream'))}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body,
      });
      result.dataset.position = answer.last_position;
      show(
        result,
        `appended at position ${int(answer.last_position)}; next expected version ${answer.next_expected_version}`,
        'ok',
      );
    } catch (error) {
      show(result, `${error.code || 'error'}: ${error.message}`, 'bad');
    }
  });
}

function show(output, text, kind) {
  output.textContent = text;
  output.className = `result ${kind}`;
}

// ---------------------------------------------------------------------------
// Appends per second: the head from GET /health every second, the events
// appended between two samples, drawn over the last minute.

const samples = [];

function setHead(head) {
  $('#head').textContent = int(head);
}

async function sampleRate() {
  try {
    const head = await currentHead();
    const now = performance.now();
    const last = samples.at(-1);
    samples.push({
      now,
      head,
      rate: last ? Math.max(0, ((head - last.head) * 1000) / (now - last.now)) : 0,
    });
    if (samples.length > RATE_SAMPLES) samples.shift();
    setHead(head);
    drawSpark();
  } catch (error) {
    console.warn(`health: ${error.message}`);
  }
}

function drawSpark() {
  const rates = samples.map((s) => s.rate);
  const max = Math.max(1, ...rates);
  const step = 120 / (RATE_SAMPLES - 1);
  const offset = RATE_SAMPLES - rates.length;
  const points = rates.map(
    (r, i) => `${((offset + i) * step).toFixed(1)},${(26 - (r / max) * 24).toFixed(1)}`,
  );
  $('#spark polyline').setAttribute('points', points.join(' '));
  $('#rate').textContent = rate(rates.at(-1) || 0);
}

// ---------------------------------------------------------------------------
// Start.

function setConnection(state) {
  const conn = $('#conn');
  conn.dataset.state = state;
  conn.textContent = state === 'open' ? '● live' : '○ reconnecting…';
}

function start() {
  setUpLogin();
  setUpDeploy();
  setUpBrowser();
  setUpAppend();
  follow(
    '/plugins/live',
    (m) => {
      if (m.event === 'plugins') renderPlugins(JSON.parse(m.data));
    },
    setConnection,
  );
  showing(showNewest());
  sampleRate();
  setInterval(sampleRate, 1000);
}

start();
