// Tollgate's admin page. It talks to the Admin API only (window.K_CONFIG, from kconfig.js, says
// where), sends the pasted admin token as `Authorization: Bearer`, and renders every value it
// receives as text: elements are built with DOM calls and data goes in through text nodes,
// `textContent` and `value`, never through markup.

const K = window.K_CONFIG || {};
const TOKEN_KEY = 'tollgate.admin-token';
const CP_KEY = 'tollgate.control-plane';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  info: null,
  role: null,
  auth: false,
  controlPlanes: [],
  cp: sessionStorage.getItem(CP_KEY) || '',
};

// ---------------------------------------------------------------------------------------------
// The Admin API

/** The Admin API's base URL: `admin_gui_api_url`, else this page's host on the Admin API's port. */
function apiBase() {
  const url = String(K.ADMIN_API_URL || '').trim().replace(/\/+$/, '');
  if (url) {
    if (/^https?:\/\//i.test(url)) return url;
    return `${location.protocol}//${url.replace(/^\/\//, '')}`;
  }
  const secure = location.protocol === 'https:';
  if (secure && K.ADMIN_API_SSL_PORT) return `https://${location.hostname}:${K.ADMIN_API_SSL_PORT}`;
  if (K.ADMIN_API_PORT) return `http://${location.hostname}:${K.ADMIN_API_PORT}`;
  if (K.ADMIN_API_SSL_PORT) return `https://${location.hostname}:${K.ADMIN_API_SSL_PORT}`;
  return `${location.protocol}//${location.hostname}:8001`;
}

class ApiError extends Error {
  constructor(status, body, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(apiBase() + path, init);
  } catch (e) {
    throw new ApiError(0, null, `The Admin API at ${apiBase()} cannot be reached (${e.message}).`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** What an error says, in words: Kong's `message` and `fields`, or a problem's `invalid_parameters`. */
function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  if (err.status === 0) return err.message;
  if (err.status === 401) {
    return state.token
      ? 'The Admin API refused this admin token (401). Paste a valid one above and press "Use token".'
      : 'This Admin API requires an admin token (401). Paste one (tgp_…) above and press "Use token".';
  }
  if (err.status === 403) {
    return "This admin token's role may not do that (403): a viewer token only reads; writing needs org_admin.";
  }
  const b = err.body;
  const lines = [];
  if (b && typeof b === 'object') {
    lines.push(b.message || b.detail || b.title || `HTTP ${err.status}`);
    const walk = (prefix, v) => {
      if (v && typeof v === 'object' && !Array.isArray(v)) {
        for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
      } else if (Array.isArray(v)) {
        lines.push(`${prefix}: ${v.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('; ')}`);
      } else {
        lines.push(`${prefix}: ${v}`);
      }
    };
    if (b.fields && typeof b.fields === 'object') walk('', b.fields);
    if (Array.isArray(b.invalid_parameters)) {
      for (const p of b.invalid_parameters) lines.push(`${p.field}: ${p.reason}`);
    }
  } else {
    lines.push(b ? String(b) : `HTTP ${err.status}`);
  }
  return lines.join('\n');
}

/** Every row of a list: Kong's `data`, the nodes' `items`. */
function rowsOf(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.data)) return body.data;
  if (body && Array.isArray(body.items)) return body.items;
  return [];
}

// ---------------------------------------------------------------------------------------------
// The DOM, built without markup

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'hidden') el[k] = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function show(id, ...content) {
  const el = $(id);
  el.replaceChildren(...content);
  el.hidden = content.length === 0;
}

function fail(err) {
  show('error', describe(err));
  const needsToken = err instanceof ApiError && err.status === 401;
  $('token-form').classList.toggle('needs-token', needsToken);
  if (needsToken) $('token').focus();
}

function clearMessages() {
  show('error');
  show('notice');
}

/** A cell's text for any value. */
function text(v) {
  if (v === undefined || v === null || v === '') return '—';
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(', ') : '—';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function when(v) {
  if (v === undefined || v === null || v === '') return '—';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

const short = (id) => (id ? String(id).slice(0, 8) : '—');

// ---------------------------------------------------------------------------------------------
// What each section shows and edits

const core = () => (state.role === 'control_plane' ? `/v2/control-planes/${encodeURIComponent(state.cp)}/core-entities` : '');
const seg = encodeURIComponent;
const nameOf = (e) => (e ? e.name || e.username || e.id : null);

const PROTOCOLS = ['http', 'https', 'grpc', 'grpcs', 'tcp', 'tls', 'tls_passthrough', 'udp', 'ws', 'wss'];
const ALGORITHMS = ['round-robin', 'consistent-hashing', 'least-connections', 'latency'];
const HASH_ON = ['none', 'consumer', 'ip', 'header', 'cookie', 'path', 'query_arg', 'uri_capture'];

/** References to other entities (`{id}`), chosen by name. */
const ref = (name, label, refs) => ({ name, label, type: 'ref', refs });

const SECTIONS = [
  {
    id: 'services', title: 'Services', noun: 'service', group: 'Gateway',
    list: () => `${core()}/services?size=1000`,
    item: (e) => `${core()}/services/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['Protocol', (e) => e.protocol], ['Host', (e) => e.host], ['Port', (e) => e.port],
      ['Path', (e) => e.path], ['Enabled', (e) => e.enabled], ['Tags', (e) => e.tags],
    ],
    fields: [
      { name: 'name', label: 'Name' },
      { name: 'url', label: 'URL', edit: false, placeholder: 'http://upstream.internal:8080/path', hint: 'protocol, host, port and path at once' },
      { name: 'protocol', label: 'Protocol', type: 'select', options: PROTOCOLS, create: false },
      { name: 'host', label: 'Host', create: false },
      { name: 'port', label: 'Port', type: 'number', create: false },
      { name: 'path', label: 'Path', create: false },
      { name: 'enabled', label: 'Enabled', type: 'bool', initial: true },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
  },
  {
    id: 'routes', title: 'Routes', noun: 'route', group: 'Gateway', refs: ['services'],
    list: () => `${core()}/routes?size=1000`,
    item: (e) => `${core()}/routes/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['Service', (e, r) => nameOf(r.services.get(e.service && e.service.id))],
      ['Protocols', (e) => e.protocols], ['Methods', (e) => e.methods], ['Hosts', (e) => e.hosts],
      ['Paths', (e) => e.paths], ['Tags', (e) => e.tags],
    ],
    fields: [
      { name: 'name', label: 'Name' },
      ref('service', 'Service', 'services'),
      { name: 'protocols', label: 'Protocols', type: 'list', initial: ['http', 'https'] },
      { name: 'methods', label: 'Methods', type: 'list', placeholder: 'GET, POST' },
      { name: 'hosts', label: 'Hosts', type: 'list', placeholder: 'api.example.com' },
      { name: 'paths', label: 'Paths', type: 'list', placeholder: '/billing' },
      { name: 'strip_path', label: 'Strip path', type: 'bool', initial: true },
      { name: 'preserve_host', label: 'Preserve host', type: 'bool', initial: false },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
  },
  {
    id: 'consumers', title: 'Consumers', noun: 'consumer', group: 'Gateway',
    list: () => `${core()}/consumers?size=1000`,
    item: (e) => `${core()}/consumers/${seg(e.id)}`,
    columns: [['Username', (e) => e.username], ['Custom ID', (e) => e.custom_id], ['Tags', (e) => e.tags], ['Created', (e) => when(e.created_at)]],
    fields: [
      { name: 'username', label: 'Username' },
      { name: 'custom_id', label: 'Custom ID' },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
    subs: [
      {
        label: 'Keys', title: (c) => `Keys of consumer ${nameOf(c)}`, noun: 'key',
        list: (c) => `${core()}/consumers/${seg(c.id)}/key-auth?size=1000`,
        create: (c) => `${core()}/consumers/${seg(c.id)}/key-auth`,
        item: (e, c) => `${core()}/consumers/${seg(c.id)}/key-auth/${seg(e.id)}`,
        columns: [['Key', (e) => e.key], ['ID', (e) => short(e.id)], ['Tags', (e) => e.tags], ['Created', (e) => when(e.created_at)]],
        fields: [
          { name: 'key', label: 'Key', placeholder: 'empty: one is generated' },
          { name: 'tags', label: 'Tags', type: 'list' },
        ],
        describe: (e) => `key ${e.key}`,
      },
    ],
  },
  {
    id: 'plugins', title: 'Plugins', noun: 'plugin', group: 'Gateway', refs: ['services', 'routes', 'consumers', 'enabled'],
    list: () => `${core()}/plugins?size=1000`,
    item: (e) => `${core()}/plugins/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['Instance', (e) => e.instance_name],
      ['Applies to', (e, r) => scopeOf(e, r)], ['Enabled', (e) => e.enabled], ['Config', (e) => e.config],
    ],
    fields: [
      { name: 'name', label: 'Plugin', type: 'select', options: (r) => r.enabled, edit: false },
      { name: 'instance_name', label: 'Instance name' },
      ref('service', 'Service', 'services'),
      ref('route', 'Route', 'routes'),
      ref('consumer', 'Consumer', 'consumers'),
      { name: 'config', label: 'Config (JSON)', type: 'json', initial: {}, wide: true },
      { name: 'enabled', label: 'Enabled', type: 'bool', initial: true },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
    describe: (e) => `plugin ${e.name}`,
  },
  {
    id: 'upstreams', title: 'Upstreams', noun: 'upstream', group: 'Gateway',
    list: () => `${core()}/upstreams?size=1000`,
    item: (e) => `${core()}/upstreams/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['Algorithm', (e) => e.algorithm], ['Hash on', (e) => e.hash_on],
      ['Slots', (e) => e.slots], ['Host header', (e) => e.host_header], ['Tags', (e) => e.tags],
    ],
    fields: [
      { name: 'name', label: 'Name' },
      { name: 'algorithm', label: 'Algorithm', type: 'select', options: ALGORITHMS, initial: 'round-robin' },
      { name: 'hash_on', label: 'Hash on', type: 'select', options: HASH_ON, initial: 'none' },
      { name: 'hash_on_header', label: 'Hash on header' },
      { name: 'slots', label: 'Slots', type: 'number' },
      { name: 'host_header', label: 'Host header' },
      { name: 'healthchecks', label: 'Health checks (JSON)', type: 'json', wide: true, placeholder: '{"passive": {"unhealthy": {"http_failures": 3}}}' },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
    subs: [
      {
        label: 'Targets', title: (u) => `Targets of upstream ${nameOf(u)}`, noun: 'target',
        list: (u) => `${core()}/upstreams/${seg(u.id)}/health`,
        fallback: (u) => `${core()}/upstreams/${seg(u.id)}/targets?size=1000`,
        create: (u) => `${core()}/upstreams/${seg(u.id)}/targets`,
        item: (e, u) => `${core()}/upstreams/${seg(u.id)}/targets/${seg(e.id)}`,
        columns: [
          ['Target', (e) => e.target], ['Weight', (e) => e.weight],
          ['Health', (e) => h('span', { class: `health-${e.health || 'none'}` }, text(e.health))],
          ['Addresses', (e) => addresses(e)], ['Tags', (e) => e.tags],
        ],
        fields: [
          { name: 'target', label: 'Target', placeholder: 'host:port' },
          { name: 'weight', label: 'Weight', type: 'number', initial: 100 },
          { name: 'tags', label: 'Tags', type: 'list' },
        ],
        actions: [
          { label: 'Mark healthy', run: (e, u) => api('PUT', `${core()}/upstreams/${seg(u.id)}/targets/${seg(e.id)}/healthy`), done: 'Marked healthy.' },
          { label: 'Mark unhealthy', run: (e, u) => api('PUT', `${core()}/upstreams/${seg(u.id)}/targets/${seg(e.id)}/unhealthy`), done: 'Marked unhealthy.' },
        ],
        describe: (e) => `target ${e.target}`,
      },
    ],
  },
  {
    id: 'certificates', title: 'Certificates', noun: 'certificate', group: 'Gateway',
    list: () => `${core()}/certificates?size=1000`,
    item: (e) => `${core()}/certificates/${seg(e.id)}`,
    columns: [['ID', (e) => short(e.id)], ['SNIs', (e) => e.snis], ['Tags', (e) => e.tags], ['Created', (e) => when(e.created_at)]],
    fields: [
      { name: 'cert', label: 'Certificate (PEM)', type: 'pem', wide: true },
      { name: 'key', label: 'Private key (PEM)', type: 'pem', wide: true },
      { name: 'snis', label: 'SNIs', type: 'list', placeholder: 'example.com, *.example.com' },
      { name: 'tags', label: 'Tags', type: 'list' },
    ],
    describe: (e) => `certificate ${short(e.id)}${e.snis && e.snis.length ? ` (${e.snis.join(', ')})` : ''}`,
  },
  {
    id: 'control-planes', title: 'Control planes', noun: 'control plane', group: 'Control plane', cpOnly: true,
    list: () => '/v2/control-planes?page[size]=1000',
    item: (e) => `/v2/control-planes/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['ID', (e) => e.id], ['Description', (e) => e.description],
      ['Cluster type', (e) => e.config && e.config.cluster_type], ['Endpoint', (e) => e.config && e.config.control_plane_endpoint],
      ['Labels', (e) => e.labels],
    ],
    fields: [
      { name: 'name', label: 'Name' },
      { name: 'description', label: 'Description' },
      { name: 'labels', label: 'Labels (JSON)', type: 'json', placeholder: '{"team": "billing"}' },
    ],
    changed: () => loadControlPlanes(),
    subs: [
      {
        label: 'Nodes', title: (cp) => `Data plane nodes of ${nameOf(cp)}`, noun: 'node', readOnly: true,
        list: (cp) => `/v2/control-planes/${seg(cp.id)}/nodes`,
        columns: [
          ['Hostname', (e) => e.hostname], ['ID', (e) => e.id], ['Version', (e) => e.version],
          ['Sync status', (e) => h('span', { class: `sync-${e.sync_status}` }, text(e.sync_status))],
          ['Connected', (e) => e.connected], ['Config hash', (e) => e.config_hash], ['Last ping', (e) => when(e.last_ping)],
        ],
      },
      {
        label: 'Data plane tokens', title: (cp) => `Data plane tokens of ${nameOf(cp)}`, noun: 'data plane token',
        list: (cp) => `/v2/control-planes/${seg(cp.id)}/data-plane-tokens`,
        create: (cp) => `/v2/control-planes/${seg(cp.id)}/data-plane-tokens`,
        item: (e, cp) => `/v2/control-planes/${seg(cp.id)}/data-plane-tokens/${seg(e.id)}`,
        editable: false,
        columns: [['Name', (e) => e.name], ['ID', (e) => e.id], ['Created', (e) => when(e.created_at)]],
        fields: [{ name: 'name', label: 'Name' }],
        secret: 'token',
      },
    ],
  },
  {
    id: 'realms', title: 'Realms', noun: 'realm', group: 'Control plane', cpOnly: true,
    list: () => '/v1/realms?page[size]=1000',
    item: (e) => `/v1/realms/${seg(e.id)}`,
    columns: [
      ['Name', (e) => e.name], ['ID', (e) => short(e.id)],
      ['Allowed control planes', (e) => (e.allowed_control_planes || []).map(cpName)],
      ['TTL (min)', (e) => e.ttl], ['Negative TTL (min)', (e) => e.negative_ttl], ['Consumer groups', (e) => e.consumer_groups],
    ],
    fields: [
      { name: 'name', label: 'Name' },
      { name: 'allowed_control_planes', label: 'Allowed control planes', type: 'list', hint: 'control plane ids (see Control planes), or *' },
      { name: 'ttl', label: 'TTL (minutes)', type: 'number' },
      { name: 'negative_ttl', label: 'Negative TTL (minutes)', type: 'number' },
      { name: 'consumer_groups', label: 'Consumer groups', type: 'list' },
    ],
    subs: [
      {
        label: 'Consumers', title: (r) => `Consumers of realm ${nameOf(r)}`, noun: 'realm consumer',
        list: (r) => `/v1/realms/${seg(r.id)}/consumers?page[size]=1000`,
        create: (r) => `/v1/realms/${seg(r.id)}/consumers`,
        item: (e, r) => `/v1/realms/${seg(r.id)}/consumers/${seg(e.id)}`,
        columns: [
          ['Username', (e) => e.username], ['Custom ID', (e) => e.custom_id], ['Type', (e) => e.type],
          ['Consumer groups', (e) => e.consumer_groups], ['Tags', (e) => e.tags],
        ],
        fields: [
          { name: 'username', label: 'Username' },
          { name: 'custom_id', label: 'Custom ID' },
          { name: 'type', label: 'Type', type: 'select', options: ['proxy', 'developer', 'admin', 'application'], initial: 'proxy' },
          { name: 'consumer_groups', label: 'Consumer groups', type: 'list' },
          { name: 'tags', label: 'Tags', type: 'list' },
        ],
      },
    ],
  },
  {
    id: 'tokens', title: 'Admin tokens', noun: 'admin token', group: 'Access', authOnly: true,
    list: () => '/v1/tokens',
    item: (e) => `/v1/tokens/${seg(e.id)}`,
    editable: false,
    columns: [['Name', (e) => e.name], ['Role', (e) => e.role], ['ID', (e) => e.id], ['Created', (e) => when(e.created_at)]],
    fields: [
      { name: 'name', label: 'Name' },
      { name: 'role', label: 'Role', type: 'select', options: ['org_admin', 'viewer'], initial: 'viewer' },
    ],
    secret: 'token',
  },
];

function scopeOf(plugin, refs) {
  const parts = [];
  if (plugin.service) parts.push(`service ${nameOf(refs.services.get(plugin.service.id)) || plugin.service.id}`);
  if (plugin.route) parts.push(`route ${nameOf(refs.routes.get(plugin.route.id)) || plugin.route.id}`);
  if (plugin.consumer) parts.push(`consumer ${nameOf(refs.consumers.get(plugin.consumer.id)) || plugin.consumer.id}`);
  if (plugin.consumer_group) parts.push(`consumer group ${plugin.consumer_group.id}`);
  return parts.length ? parts.join(', ') : 'global';
}

function addresses(target) {
  const list = target.data && Array.isArray(target.data.addresses) ? target.data.addresses : [];
  return list.map((a) => `${a.ip}:${a.port}${a.health ? ` ${a.health}` : ''}`);
}

function cpName(id) {
  if (id === '*') return 'all';
  const cp = state.controlPlanes.find((c) => c.id === id);
  return cp ? cp.name : id;
}

/** The entities a section's columns and forms refer to, by id. */
async function loadRefs(names) {
  const refs = { services: new Map(), routes: new Map(), consumers: new Map(), enabled: [] };
  await Promise.all((names || []).map(async (name) => {
    if (name === 'enabled') {
      const body = await api('GET', `${core()}/plugins/enabled`);
      refs.enabled = (body && body.enabled_plugins) || [];
    } else {
      const body = await api('GET', `${core()}/${name}?size=1000`);
      refs[name] = new Map(rowsOf(body).map((e) => [e.id, e]));
    }
  }));
  return refs;
}

// ---------------------------------------------------------------------------------------------
// Forms

function fieldInput(f, value, refs) {
  const id = `f-${f.name}-${Math.random().toString(36).slice(2, 8)}`;
  let input;
  switch (f.type) {
    case 'bool':
      input = h('input', { id, name: f.name, type: 'checkbox', checked: Boolean(value) });
      return h('div', { class: 'field bool' }, input, h('label', { for: id }, f.label));
    case 'select':
    case 'ref': {
      const options = f.type === 'ref'
        ? [['', '(none)'], ...[...refs[f.refs].values()].map((e) => [e.id, nameOf(e)])]
        : (typeof f.options === 'function' ? f.options(refs) : f.options).map((o) => [o, o]);
      const current = f.type === 'ref' ? (value && value.id) || '' : value;
      input = h('select', { id, name: f.name }, options.map(([v, label]) => h('option', { value: v }, label)));
      if (current !== undefined && current !== null) input.value = current;
      break;
    }
    case 'json':
    case 'pem':
      input = h('textarea', { id, name: f.name, spellcheck: 'false', placeholder: f.placeholder || '' });
      input.value = f.type === 'json' ? (value === undefined || value === null ? '' : JSON.stringify(value, null, 2)) : value || '';
      break;
    case 'list':
      input = h('input', { id, name: f.name, type: 'text', placeholder: f.placeholder || '' });
      input.value = Array.isArray(value) ? value.join(', ') : '';
      break;
    case 'number':
      input = h('input', { id, name: f.name, type: 'number', placeholder: f.placeholder || '' });
      input.value = value === undefined || value === null ? '' : String(value);
      break;
    default:
      input = h('input', { id, name: f.name, type: 'text', placeholder: f.placeholder || '', spellcheck: 'false' });
      input.value = value === undefined || value === null ? '' : String(value);
  }
  return h('div', { class: `field${f.wide ? ' wide' : ''}` },
    h('label', { for: id }, f.label), input, f.hint ? h('span', { class: 'hint' }, f.hint) : null);
}

/** A field's value as the Admin API takes it (`null` for empty). */
function fieldValue(form, f) {
  const el = form.elements.namedItem(f.name);
  switch (f.type) {
    case 'bool':
      return el.checked;
    case 'ref':
      return el.value ? { id: el.value } : null;
    case 'list':
      return el.value.split(',').map((s) => s.trim()).filter(Boolean);
    case 'number':
      return el.value.trim() === '' ? null : Number(el.value);
    case 'json': {
      const t = el.value.trim();
      if (!t) return null;
      try {
        return JSON.parse(t);
      } catch (e) {
        throw new Error(`${f.label}: not valid JSON (${e.message})`);
      }
    }
    default:
      return el.value === '' ? null : el.value;
  }
}

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** The body of a create (every field given) or of a PATCH (only the fields changed). */
function formBody(form, fields, original) {
  const body = {};
  for (const f of fields) {
    const v = fieldValue(form, f);
    if (original) {
      let before = original[f.name];
      if (f.type === 'ref') before = before && before.id ? { id: before.id } : null;
      if (f.type === 'list') before = before || [];
      if (!same(v, before)) body[f.name] = f.type === 'list' && v.length === 0 ? [] : v;
    } else if (v !== null && !(Array.isArray(v) && v.length === 0)) {
      body[f.name] = v;
    }
  }
  return body;
}

// ---------------------------------------------------------------------------------------------
// One list with its forms: a section, or a section's rows' sub-list

/**
 * Renders `desc` into `box`. `parent` is the entity a sub-list belongs to; `sub` the panel its own
 * sub-lists open in.
 */
async function renderList(box, desc, parent, heading) {
  const panel = h('div', { class: 'panel', dataset: { list: desc.id || desc.label } });
  box.replaceChildren(panel);
  const title = parent ? desc.title(parent) : desc.title;
  const form = h('form', { class: 'entity-form', hidden: true });
  const table = h('div', { class: 'rows' }, h('div', { class: 'empty' }, 'Loading…'));
  const subBox = h('div', { class: 'sub' });
  const canCreate = !desc.readOnly;
  const head = h('div', { class: 'panel-head' },
    h(heading, {}, title),
    canCreate ? h('button', { type: 'button', class: 'primary', onclick: () => openForm(null) }, `New ${desc.noun}`) : null,
    h('button', { type: 'button', onclick: () => load() }, 'Refresh'));
  panel.append(head, form, table);
  box.append(subBox);
  // The form may be opened before the entities it refers to are loaded: it waits for them.
  const refsLoaded = loadRefs(desc.refs)
    .catch((e) => {
      fail(e);
      return null;
    })
    .then((r) => r || { services: new Map(), routes: new Map(), consumers: new Map(), enabled: [] });
  let refs = null;
  refs = await refsLoaded;
  const listPath = () => (parent ? desc.list(parent) : desc.list());
  const itemPath = (e) => (parent ? desc.item(e, parent) : desc.item(e));
  const what = (e) => (desc.describe ? desc.describe(e) : `${desc.noun} ${nameOf(e)}`);
  let selected = null;

  async function openForm(entity) {
    if (!refs) refs = await refsLoaded;
    const fields = desc.fields.filter((f) => (entity ? f.edit !== false : f.create !== false));
    form.replaceChildren(
      h('h4', {}, entity ? `Edit ${what(entity)}` : `New ${desc.noun}`),
      h('div', { class: 'fields' }, fields.map((f) => fieldInput(f, entity ? entity[f.name] : f.initial, refs))),
      h('div', { class: 'form-actions' },
        h('button', { type: 'submit', class: 'primary' }, entity ? 'Save' : 'Create'),
        h('button', { type: 'button', onclick: () => { form.hidden = true; } }, 'Cancel')));
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      clearMessages();
      try {
        const body = formBody(form, fields, entity);
        const created = entity
          ? await api('PATCH', itemPath(entity), body)
          : await api('POST', parent ? desc.create(parent) : listPath().split('?')[0], body);
        form.hidden = true;
        if (!entity && desc.secret && created && created[desc.secret]) {
          show('notice', `Created ${what(created)}. Copy its secret now, it is not shown again: `, h('code', { class: 'secret' }, created[desc.secret]));
        } else {
          show('notice', `${entity ? 'Saved' : 'Created'} ${what(created || entity)}.`);
        }
        if (desc.changed) await desc.changed();
        await load();
      } catch (e) {
        fail(e);
      }
    };
    form.hidden = false;
    const first = form.querySelector('input, select, textarea');
    if (first) first.focus();
  }

  async function remove(entity) {
    if (!window.confirm(`Delete ${what(entity)}?`)) return;
    clearMessages();
    try {
      await api('DELETE', itemPath(entity));
      show('notice', `Deleted ${what(entity)}.`);
      if (selected && selected.id === entity.id) subBox.replaceChildren();
      if (desc.changed) await desc.changed();
      await load();
    } catch (e) {
      fail(e);
    }
  }

  async function load() {
    let rows;
    try {
      rows = rowsOf(await api('GET', listPath()));
    } catch (e) {
      if (desc.fallback && e instanceof ApiError && e.status === 404) {
        try {
          rows = rowsOf(await api('GET', desc.fallback(parent)));
        } catch (e2) {
          fail(e2);
          rows = [];
        }
      } else {
        fail(e);
        table.replaceChildren(h('div', { class: 'empty' }, 'Not available: see the message above.'));
        return;
      }
    }
    if (rows.length === 0) {
      table.replaceChildren(h('div', { class: 'empty' }, `No ${desc.noun}s yet.`));
      return;
    }
    const headRow = h('tr', {}, desc.columns.map(([label]) => h('th', {}, label)), h('th', {}, ''));
    const body = rows.map((e) => {
      const actions = [];
      for (const s of desc.subs || []) {
        actions.push(h('button', { type: 'button', onclick: () => openSub(s, e) }, s.label));
      }
      for (const a of desc.actions || []) {
        actions.push(h('button', {
          type: 'button',
          onclick: async () => {
            clearMessages();
            try {
              await a.run(e, parent);
              show('notice', `${what(e)}: ${a.done}`);
              await load();
            } catch (err) {
              fail(err);
            }
          },
        }, a.label));
      }
      if (!desc.readOnly && desc.editable !== false) actions.push(h('button', { type: 'button', onclick: () => openForm(e) }, 'Edit'));
      if (!desc.readOnly) actions.push(h('button', { type: 'button', class: 'danger', onclick: () => remove(e) }, 'Delete'));
      const cells = desc.columns.map(([label, get]) => {
        const v = get(e, refs);
        return h('td', { dataset: { column: label } }, v instanceof Node ? v : text(v));
      });
      return h('tr', { dataset: { id: e.id }, class: selected && selected.id === e.id ? 'selected' : null }, cells, h('td', { class: 'actions' }, actions));
    });
    table.replaceChildren(h('table', { class: 'entities' }, h('thead', {}, headRow), h('tbody', {}, body)));
  }

  async function openSub(s, entity) {
    selected = entity;
    for (const tr of table.querySelectorAll('tr[data-id]')) tr.classList.toggle('selected', tr.dataset.id === entity.id);
    await renderList(subBox, s, entity, 'h3');
  }

  await load();
}

// ---------------------------------------------------------------------------------------------
// The page

function visibleSections() {
  return SECTIONS.filter((s) => (!s.cpOnly || state.role === 'control_plane') && (!s.authOnly || state.auth));
}

function renderNav(current) {
  const nav = $('nav');
  const items = [];
  let group = null;
  for (const s of visibleSections()) {
    if (s.group !== group) {
      group = s.group;
      items.push(h('div', { class: 'group' }, group));
    }
    items.push(h('a', { href: `#${s.id}`, class: s.id === current ? 'current' : null, dataset: { section: s.id } }, s.title));
  }
  nav.replaceChildren(...items);
}

async function route() {
  const sections = visibleSections();
  const wanted = location.hash.replace(/^#/, '');
  const section = sections.find((s) => s.id === wanted) || sections[0];
  renderNav(section && section.id);
  if (!section) return;
  await renderList($('view'), section, null, 'h2');
}

async function loadControlPlanes() {
  const body = await api('GET', '/v2/control-planes?page[size]=1000');
  state.controlPlanes = rowsOf(body);
  if (!state.controlPlanes.some((c) => c.id === state.cp)) {
    const def = state.controlPlanes.find((c) => c.name === 'default') || state.controlPlanes[0];
    state.cp = def ? def.id : '';
  }
  const select = $('cp-select');
  select.replaceChildren(...state.controlPlanes.map((c) => h('option', { value: c.id }, c.name)));
  select.value = state.cp;
  $('cp-picker').hidden = false;
}

async function connect() {
  clearMessages();
  $('token-form').classList.remove('needs-token');
  try {
    state.info = await api('GET', '/');
  } catch (e) {
    state.info = null;
    $('node-info').textContent = `Admin API: ${apiBase()}`;
    $('nav').replaceChildren();
    $('view').replaceChildren();
    $('token-form').hidden = false;
    fail(e);
    return;
  }
  const conf = state.info.configuration || {};
  state.role = conf.role || 'traditional';
  state.auth = state.role === 'control_plane' || conf.admin_auth === 'on';
  // An Admin API that answered without a token needs none.
  $('token-form').hidden = !state.auth && !state.token;
  $('node-info').textContent = `${state.info.hostname || ''} · ${state.role} · Tollgate ${state.info.tollgate_version || state.info.version || ''} · Admin API ${apiBase()}`;
  if (state.role === 'control_plane') {
    try {
      await loadControlPlanes();
    } catch (e) {
      fail(e);
      return;
    }
  } else {
    $('cp-picker').hidden = true;
  }
  await route();
}

function start() {
  $('token').value = state.token;
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('token').value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    connect();
  });
  $('token-forget').addEventListener('click', () => {
    state.token = '';
    $('token').value = '';
    sessionStorage.removeItem(TOKEN_KEY);
    connect();
  });
  $('cp-select').addEventListener('change', () => {
    state.cp = $('cp-select').value;
    sessionStorage.setItem(CP_KEY, state.cp);
    clearMessages();
    route();
  });
  window.addEventListener('hashchange', () => {
    clearMessages();
    route();
  });
  connect();
}

start();
