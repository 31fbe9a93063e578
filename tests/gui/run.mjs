// Drives the admin page in headless Chromium (Debian's, through playwright-core) for
// tests/admin_gui.rs: `node run.mjs <scenario>` with the gateway's addresses in the environment.
// Every step is done on the page, then checked through the Admin API (the entity really exists,
// really changed, really is gone). Screenshots go to $SHOTS. Exits non-zero on the first failure,
// including a browser that cannot be started.
//
// Environment: GUI (the page), ADMIN (the Admin API), PROXY (the proxy, traditional only),
// TOKEN (an org_admin token, control plane only), CP_WITH_NODE (a control plane id a data plane
// joined), UPSTREAM (an echo upstream URL), CERT and KEY (PEM files), SHOTS (screenshot folder),
// CHROMIUM (the browser, /usr/bin/chromium by default).

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const scenario = process.argv[2];
const SHOTS = env.SHOTS || 'gui-screenshots';
mkdirSync(SHOTS, { recursive: true });

// ---------------------------------------------------------------------------------------------
// Checks

let step = 'start';
function ok(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}
function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${step}: ${what}: expected ${e}, got ${a}`);
}

/** The Admin API, as a script sees it (with the admin token when there is one). */
let adminToken = env.TOKEN || '';
async function adm(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (adminToken) headers.Authorization = `Bearer ${adminToken}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(env.ADMIN + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

async function until(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await cond();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${step}: ${what} (not within ${ms} ms; last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

// ---------------------------------------------------------------------------------------------
// The page

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Root (CI) needs --no-sandbox; a shared-memory mount may be small in containers. The browser
  // reaches loopback addresses only: no background traffic, and no name resolves but localhost.
  args: [
    '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run', '--disable-quic',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-domain-reliability',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ],
});
const page = await browser.newPage({ viewport: { width: 1360, height: 860 } });
page.setDefaultTimeout(15000);
const problems = [];
const dialogs = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('dialog', async (d) => {
  dialogs.push({ type: d.type(), message: d.message() });
  if (d.type() === 'confirm') await d.accept();
  else await d.dismiss();
});

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

const panel = (list) => page.locator(`[data-list="${list}"]`);
const cellText = (column) => `td[data-column="${column}"]`;
/** The row of `p` whose `column` cell reads exactly `value`. */
function row(p, column, value) {
  return p.locator('tr[data-id]').filter({ has: page.locator(cellText(column)).getByText(value, { exact: true }) });
}
async function nav(section) {
  await page.locator(`#nav a[data-section="${section}"]`).click();
  await panel(section).waitFor();
}
async function newEntity(p, noun) {
  await p.getByRole('button', { name: `New ${noun}`, exact: true }).click();
  await p.locator('form.entity-form').waitFor();
}
async function edit(p, r) {
  await r.getByRole('button', { name: 'Edit', exact: true }).click();
  await p.locator('form.entity-form').waitFor();
}
/** Fills a form: strings into inputs and textareas, `{select: label}` into selects, booleans into checkboxes. */
async function fill(p, values) {
  const form = p.locator('form.entity-form');
  for (const [name, v] of Object.entries(values)) {
    const el = form.locator(`[name="${name}"]`);
    if (typeof v === 'boolean') await el.setChecked(v);
    else if (v && typeof v === 'object' && 'select' in v) await el.selectOption({ label: v.select });
    else await el.fill(String(v));
  }
}
async function submit(p) {
  await p.locator('form.entity-form button[type=submit]').click();
  await until(async () => (await p.locator('form.entity-form').isHidden()) || (await page.locator('#error').isVisible()), 'the form was answered');
  if (await page.locator('#error').isVisible()) throw new Error(`${step}: the page says: ${await page.locator('#error').textContent()}`);
}
async function remove(r) {
  await r.getByRole('button', { name: 'Delete', exact: true }).click();
}
async function cell(r, column) {
  return (await r.locator(cellText(column)).textContent()).trim();
}
async function waitCell(p, keyColumn, key, column, expected) {
  await until(async () => (await row(p, keyColumn, key).count()) === 1 && (await cell(row(p, keyColumn, key), column)) === expected,
    `${column} of ${key} reads ${expected}`);
}
async function gone(p, column, value) {
  await until(async () => (await row(p, column, value).count()) === 0, `${value} is no longer listed`);
}
async function notice(text) {
  await until(async () => ((await page.locator('#notice').textContent()) || '').includes(text), `the page says "${text}"`);
}
async function error(text) {
  await until(async () => ((await page.locator('#error').textContent()) || '').includes(text), `the page shows the error "${text}"`);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async function traditional() {
  step = 'open the page';
  await page.goto(env.GUI);
  await until(async () => (await page.locator('#node-info').textContent()).includes('traditional'), 'the node is shown');
  ok(await page.locator('#token-form').isHidden(), 'no token is asked for by an open Admin API');
  ok(await page.locator('#nav a[data-section="realms"]').count() === 0, 'no control plane sections on a traditional node');

  step = 'create a service';
  await nav('services');
  const services = panel('services');
  await newEntity(services, 'service');
  await fill(services, { name: 'billing', url: `${env.UPSTREAM}/v1`, tags: 'gui' });
  await submit(services);
  await row(services, 'Name', 'billing').waitFor();
  let r = await adm('GET', '/services/billing');
  eq(r.status, 200, 'the service exists');
  eq([r.body.path, r.body.tags], ['/v1', ['gui']], 'its path and tags');
  const serviceId = r.body.id;

  step = 'edit the service';
  await edit(services, row(services, 'Name', 'billing'));
  await fill(services, { path: '/v2', tags: 'gui, edited' });
  await submit(services);
  await waitCell(services, 'Name', 'billing', 'Path', '/v2');
  r = await adm('GET', '/services/billing');
  eq([r.body.path, r.body.tags], ['/v2', ['gui', 'edited']], 'the service was changed');

  step = 'create a route';
  await nav('routes');
  const routes = panel('routes');
  await newEntity(routes, 'route');
  await fill(routes, { name: 'billing-route', service: { select: 'billing' }, paths: '/billing', methods: 'GET, POST' });
  await submit(routes);
  await waitCell(routes, 'Name', 'billing-route', 'Service', 'billing');
  r = await adm('GET', '/routes/billing-route');
  eq(r.status, 200, 'the route exists');
  eq([r.body.service.id, r.body.paths, r.body.methods], [serviceId, ['/billing'], ['GET', 'POST']], 'its service, paths, methods');

  step = 'edit the route';
  await edit(routes, row(routes, 'Name', 'billing-route'));
  await fill(routes, { tags: 'payments', strip_path: false });
  await submit(routes);
  await waitCell(routes, 'Name', 'billing-route', 'Tags', 'payments');
  r = await adm('GET', '/routes/billing-route');
  eq([r.body.tags, r.body.strip_path], [['payments'], false], 'the route was changed');
  await shot('traditional-routes');

  step = 'create a consumer';
  await nav('consumers');
  const consumers = panel('consumers');
  await newEntity(consumers, 'consumer');
  await fill(consumers, { username: 'ann', custom_id: 'ann-1' });
  await submit(consumers);
  await row(consumers, 'Username', 'ann').waitFor();
  r = await adm('GET', '/consumers/ann');
  eq([r.status, r.body.custom_id], [200, 'ann-1'], 'the consumer exists');

  step = "give the consumer keys";
  await row(consumers, 'Username', 'ann').getByRole('button', { name: 'Keys' }).click();
  const keys = panel('Keys');
  await keys.waitFor();
  ok((await keys.locator('h3').textContent()).includes('ann'), 'the keys panel names the consumer');
  await newEntity(keys, 'key');
  await fill(keys, { key: 'ann-key' });
  await submit(keys);
  await row(keys, 'Key', 'ann-key').waitFor();
  await newEntity(keys, 'key');
  await submit(keys);
  await until(async () => (await keys.locator('tr[data-id]').count()) === 2, 'a generated key is listed');
  r = await adm('GET', '/consumers/ann/key-auth');
  eq(r.body.data.length, 2, 'two keys');
  const generated = r.body.data.find((k) => k.key !== 'ann-key');
  ok(generated && generated.key.length >= 16, 'a key was generated');
  await shot('traditional-consumer-keys');

  step = 'delete a key';
  await remove(row(keys, 'Key', generated.key));
  await gone(keys, 'Key', generated.key);
  r = await adm('GET', '/consumers/ann/key-auth');
  eq(r.body.data.map((k) => k.key), ['ann-key'], 'one key left');

  step = 'edit the consumer';
  await edit(consumers, row(consumers, 'Username', 'ann'));
  await fill(consumers, { custom_id: 'ann-2' });
  await submit(consumers);
  await waitCell(consumers, 'Username', 'ann', 'Custom ID', 'ann-2');
  eq((await adm('GET', '/consumers/ann')).body.custom_id, 'ann-2', 'the consumer was changed');

  step = 'add key-auth to the route';
  await nav('plugins');
  const plugins = panel('plugins');
  await newEntity(plugins, 'plugin');
  await fill(plugins, { name: { select: 'key-auth' }, route: { select: 'billing-route' }, config: '{"key_names": ["apikey"]}' });
  await submit(plugins);
  await waitCell(plugins, 'Name', 'key-auth', 'Applies to', 'route billing-route');
  r = await adm('GET', '/routes/billing-route/plugins');
  eq(r.body.data.map((p) => [p.name, p.config.key_names]), [['key-auth', ['apikey']]], 'the plugin is on the route');
  const pluginId = r.body.data[0].id;
  let call = await fetch(`${env.PROXY}/billing`);
  eq(call.status, 401, 'the proxy asks for a key');
  call = await fetch(`${env.PROXY}/billing`, { headers: { apikey: 'ann-key' } });
  eq(call.status, 200, "the proxy takes ann's key");
  await shot('traditional-plugins');

  step = 'disable the plugin';
  await edit(plugins, row(plugins, 'Name', 'key-auth'));
  await fill(plugins, { enabled: false });
  await submit(plugins);
  await waitCell(plugins, 'Name', 'key-auth', 'Enabled', 'no');
  eq((await adm('GET', `/plugins/${pluginId}`)).body.enabled, false, 'the plugin is disabled');
  call = await fetch(`${env.PROXY}/billing`);
  eq(call.status, 200, 'the proxy no longer asks for a key');

  step = 'create an upstream';
  await nav('upstreams');
  const upstreams = panel('upstreams');
  await newEntity(upstreams, 'upstream');
  await fill(upstreams, {
    name: 'pool', algorithm: { select: 'least-connections' },
    healthchecks: '{"passive": {"unhealthy": {"http_failures": 3}}}',
  });
  await submit(upstreams);
  await waitCell(upstreams, 'Name', 'pool', 'Algorithm', 'least-connections');
  r = await adm('GET', '/upstreams/pool');
  eq([r.body.algorithm, r.body.healthchecks.passive.unhealthy.http_failures], ['least-connections', 3], 'the upstream exists');

  step = 'edit the upstream';
  await edit(upstreams, row(upstreams, 'Name', 'pool'));
  await fill(upstreams, { slots: '20000' });
  await submit(upstreams);
  await waitCell(upstreams, 'Name', 'pool', 'Slots', '20000');
  eq((await adm('GET', '/upstreams/pool')).body.slots, 20000, 'the upstream was changed');

  step = 'add a target and see its health';
  await row(upstreams, 'Name', 'pool').getByRole('button', { name: 'Targets' }).click();
  const targets = panel('Targets');
  await newEntity(targets, 'target');
  await fill(targets, { target: '127.0.0.1:9001', weight: '50' });
  await submit(targets);
  await waitCell(targets, 'Target', '127.0.0.1:9001', 'Health', 'HEALTHY');
  r = await adm('GET', '/upstreams/pool/health');
  eq(r.body.data.map((t) => [t.target, t.weight, t.health]), [['127.0.0.1:9001', 50, 'HEALTHY']], 'the target is healthy');

  step = 'mark the target unhealthy';
  await row(targets, 'Target', '127.0.0.1:9001').getByRole('button', { name: 'Mark unhealthy' }).click();
  await waitCell(targets, 'Target', '127.0.0.1:9001', 'Health', 'UNHEALTHY');
  r = await adm('GET', '/upstreams/pool/health');
  eq(r.body.data[0].health, 'UNHEALTHY', 'the Admin API reports it unhealthy');
  await shot('traditional-upstream-targets');

  step = 'mark it healthy and edit it';
  await row(targets, 'Target', '127.0.0.1:9001').getByRole('button', { name: 'Mark healthy' }).click();
  await waitCell(targets, 'Target', '127.0.0.1:9001', 'Health', 'HEALTHY');
  await edit(targets, row(targets, 'Target', '127.0.0.1:9001'));
  await fill(targets, { weight: '60' });
  await submit(targets);
  await waitCell(targets, 'Target', '127.0.0.1:9001', 'Weight', '60');
  r = await adm('GET', '/upstreams/pool/targets');
  eq(r.body.data.map((t) => t.weight), [60], 'the target was changed');

  step = 'delete the target';
  await remove(row(targets, 'Target', '127.0.0.1:9001'));
  await gone(targets, 'Target', '127.0.0.1:9001');
  eq((await adm('GET', '/upstreams/pool/targets')).body.data, [], 'no target left');

  step = 'create a certificate';
  await nav('certificates');
  const certificates = panel('certificates');
  await newEntity(certificates, 'certificate');
  await fill(certificates, { cert: readFileSync(env.CERT, 'utf8'), key: readFileSync(env.KEY, 'utf8'), snis: 'gui.test' });
  await submit(certificates);
  await row(certificates, 'SNIs', 'gui.test').waitFor();
  r = await adm('GET', '/certificates/gui.test');
  eq([r.status, r.body.snis], [200, ['gui.test']], 'the certificate exists, served for gui.test');
  const certId = r.body.id;

  step = 'edit the certificate';
  await edit(certificates, row(certificates, 'SNIs', 'gui.test'));
  await fill(certificates, { snis: 'gui.test, www.gui.test' });
  await submit(certificates);
  await row(certificates, 'SNIs', 'gui.test, www.gui.test').waitFor();
  eq((await adm('GET', `/certificates/${certId}`)).body.snis, ['gui.test', 'www.gui.test'], 'the certificate was changed');
  await shot('traditional-certificates');

  step = 'delete the certificate';
  await remove(row(certificates, 'SNIs', 'gui.test, www.gui.test'));
  await gone(certificates, 'SNIs', 'gui.test, www.gui.test');
  eq((await adm('GET', `/certificates/${certId}`)).status, 404, 'the certificate is gone');

  step = 'delete the plugin';
  await nav('plugins');
  await remove(row(panel('plugins'), 'Name', 'key-auth'));
  await gone(panel('plugins'), 'Name', 'key-auth');
  eq((await adm('GET', `/plugins/${pluginId}`)).status, 404, 'the plugin is gone');

  step = 'a service with routes is not deleted';
  await nav('services');
  await remove(row(panel('services'), 'Name', 'billing'));
  await until(async () => page.locator('#error').isVisible(), 'the refusal is shown');
  eq((await adm('GET', '/services/billing')).status, 200, 'the service is still there');

  step = 'delete the route, then the service';
  await nav('routes');
  await remove(row(panel('routes'), 'Name', 'billing-route'));
  await gone(panel('routes'), 'Name', 'billing-route');
  eq((await adm('GET', '/routes/billing-route')).status, 404, 'the route is gone');
  await nav('services');
  await remove(row(panel('services'), 'Name', 'billing'));
  await gone(panel('services'), 'Name', 'billing');
  eq((await adm('GET', '/services/billing')).status, 404, 'the service is gone');

  step = 'delete the consumer and the upstream';
  await nav('consumers');
  await remove(row(panel('consumers'), 'Username', 'ann'));
  await gone(panel('consumers'), 'Username', 'ann');
  eq((await adm('GET', '/consumers/ann')).status, 404, 'the consumer is gone');
  eq((await adm('GET', '/key-auths/ann-key')).status, 404, 'and its key');
  await nav('upstreams');
  await remove(row(panel('upstreams'), 'Name', 'pool'));
  await gone(panel('upstreams'), 'Name', 'pool');
  eq((await adm('GET', '/upstreams/pool')).status, 404, 'the upstream is gone');
}

async function controlPlane() {
  step = 'the page asks for a token';
  await page.goto(env.GUI);
  await error('requires an admin token');
  ok(await page.locator('#token-form.needs-token').isVisible(), 'the token field is pointed out');
  ok(await page.locator('#nav a').count() === 0, 'nothing is listed without a token');
  await shot('control-plane-token-asked');

  step = 'paste the token';
  await page.locator('#token').fill(env.TOKEN);
  await page.getByRole('button', { name: 'Use token' }).click();
  await until(async () => (await page.locator('#node-info').textContent()).includes('control_plane'), 'the node is shown');
  ok(await page.locator('#error').isHidden(), 'no error once the token is given');
  eq(await page.evaluate(() => sessionStorage.getItem('tollgate.admin-token')), env.TOKEN, 'the token is kept for the session');

  step = 'list control planes';
  await nav('control-planes');
  const cps = panel('control-planes');
  await row(cps, 'Name', 'default').waitFor();
  await row(cps, 'Name', 'Appointments').waitFor();

  step = 'create a control plane';
  await newEntity(cps, 'control plane');
  await fill(cps, { name: 'Billing', description: 'invoices', labels: '{"team": "billing"}' });
  await submit(cps);
  await row(cps, 'Name', 'Billing').waitFor();
  let r = await adm('GET', '/v2/control-planes?filter[name][eq]=Billing');
  eq(r.body.data.map((c) => [c.name, c.description, c.labels]), [['Billing', 'invoices', { team: 'billing' }]], 'the control plane exists');
  const billing = r.body.data[0].id;

  step = 'edit the control plane';
  await edit(cps, row(cps, 'Name', 'Billing'));
  await fill(cps, { description: 'invoices and payments' });
  await submit(cps);
  await waitCell(cps, 'Name', 'Billing', 'Description', 'invoices and payments');
  eq((await adm('GET', `/v2/control-planes/${billing}`)).body.description, 'invoices and payments', 'the control plane was changed');

  step = 'see the data plane nodes and their sync status';
  await row(cps, 'Name', 'Appointments').getByRole('button', { name: 'Nodes' }).click();
  const nodes = panel('Nodes');
  await until(async () => {
    await nodes.getByRole('button', { name: 'Refresh' }).click();
    const rows = nodes.locator('tr[data-id]');
    return (await rows.count()) === 1 && (await cell(rows.first(), 'Sync status')) === 'normal';
  }, 'the data plane is listed in sync', 20000);
  r = await adm('GET', `/v2/control-planes/${env.CP_WITH_NODE}/nodes`);
  eq(r.body.items.map((n) => [n.sync_status, n.connected]), [['normal', true]], 'the Admin API lists it');
  eq(await cell(nodes.locator('tr[data-id]').first(), 'Hostname'), r.body.items[0].hostname, 'its hostname');
  await shot('control-plane-nodes');
  // The README's picture (docs/admin-gui.png is a copy), the window alone.
  await page.screenshot({ path: join(SHOTS, 'admin-gui.png') });

  step = 'mint and revoke a data plane token';
  await row(cps, 'Name', 'Billing').getByRole('button', { name: 'Data plane tokens' }).click();
  const dpTokens = panel('Data plane tokens');
  await until(async () => (await dpTokens.locator('h3').textContent()).includes('Billing'), 'the tokens of Billing are shown');
  await newEntity(dpTokens, 'data plane token');
  await fill(dpTokens, { name: 'dp-1' });
  await submit(dpTokens);
  await row(dpTokens, 'Name', 'dp-1').waitFor();
  const secret = await page.locator('#notice code.secret').textContent();
  ok(secret.startsWith('tgdp_'), `the secret is shown once (${secret})`);
  r = await adm('GET', `/v2/control-planes/${billing}/data-plane-tokens`);
  eq(r.body.data.map((t) => t.name), ['dp-1'], 'the token exists');
  await remove(row(dpTokens, 'Name', 'dp-1'));
  await gone(dpTokens, 'Name', 'dp-1');
  eq((await adm('GET', `/v2/control-planes/${billing}/data-plane-tokens`)).body.data, [], 'the token is revoked');

  step = "create a service in Billing's configuration";
  await page.locator('#cp-select').selectOption({ label: 'Billing' });
  await nav('services');
  const services = panel('services');
  await newEntity(services, 'service');
  await fill(services, { name: 'invoices', url: 'http://127.0.0.1:9/' });
  await submit(services);
  await row(services, 'Name', 'invoices').waitFor();
  eq((await adm('GET', `/v2/control-planes/${billing}/core-entities/services/invoices`)).status, 200, 'Billing holds it');
  eq((await adm('GET', '/services/invoices')).status, 404, 'the default control plane does not');
  await shot('control-plane-services');

  step = 'create a realm';
  await nav('realms');
  const realms = panel('realms');
  await newEntity(realms, 'realm');
  await fill(realms, { name: 'prod', allowed_control_planes: billing, ttl: '10', negative_ttl: '5', consumer_groups: 'gold' });
  await submit(realms);
  await waitCell(realms, 'Name', 'prod', 'Allowed control planes', 'Billing');
  r = await adm('GET', '/v1/realms');
  const realm = r.body.data.find((x) => x.name === 'prod');
  ok(realm, 'the realm exists');
  eq([realm.allowed_control_planes, realm.ttl, realm.negative_ttl, realm.consumer_groups], [[billing], 10, 5, ['gold']], 'its settings');

  step = 'edit the realm';
  await edit(realms, row(realms, 'Name', 'prod'));
  await fill(realms, { ttl: '20' });
  await submit(realms);
  await waitCell(realms, 'Name', 'prod', 'TTL (min)', '20');
  eq((await adm('GET', `/v1/realms/${realm.id}`)).body.ttl, 20, 'the realm was changed');

  step = 'create a realm consumer';
  await row(realms, 'Name', 'prod').getByRole('button', { name: 'Consumers' }).click();
  const members = panel('Consumers');
  await newEntity(members, 'realm consumer');
  await fill(members, { username: 'Cruz', consumer_groups: 'silver' });
  await submit(members);
  await waitCell(members, 'Username', 'Cruz', 'Consumer groups', 'silver');
  r = await adm('GET', `/v1/realms/${realm.id}/consumers?filter[username]=Cruz`);
  eq(r.body.data.map((c) => [c.username, c.consumer_groups, c.type]), [['Cruz', ['silver'], 'proxy']], 'the realm consumer exists');
  const cruz = r.body.data[0].id;

  step = 'edit the realm consumer';
  await edit(members, row(members, 'Username', 'Cruz'));
  await fill(members, { custom_id: 'cruz-1' });
  await submit(members);
  await waitCell(members, 'Username', 'Cruz', 'Custom ID', 'cruz-1');
  eq((await adm('GET', `/v1/realms/${realm.id}/consumers/${cruz}`)).body.custom_id, 'cruz-1', 'the realm consumer was changed');
  await shot('control-plane-realm-consumers');

  step = 'delete the realm consumer';
  await remove(row(members, 'Username', 'Cruz'));
  await gone(members, 'Username', 'Cruz');
  eq((await adm('GET', `/v1/realms/${realm.id}/consumers/${cruz}`)).status, 404, 'the realm consumer is gone');

  step = 'mint a viewer token';
  await nav('tokens');
  const tokens = panel('tokens');
  await newEntity(tokens, 'admin token');
  await fill(tokens, { name: 'reader', role: { select: 'viewer' } });
  await submit(tokens);
  await waitCell(tokens, 'Name', 'reader', 'Role', 'viewer');
  const viewer = await page.locator('#notice code.secret').textContent();
  ok(viewer.startsWith('tgp_'), 'the viewer secret is shown once');
  r = await adm('GET', '/v1/tokens');
  ok(r.body.data.some((t) => t.name === 'reader' && t.role === 'viewer'), 'the token exists');

  step = 'a viewer reads and may not write';
  await page.locator('#token').fill(viewer);
  await page.getByRole('button', { name: 'Use token' }).click();
  await nav('realms');
  await row(panel('realms'), 'Name', 'prod').waitFor();
  await newEntity(panel('realms'), 'realm');
  await fill(panel('realms'), { name: 'nope' });
  await panel('realms').locator('form.entity-form button[type=submit]').click();
  await error('403');
  ok(!(await adm('GET', '/v1/realms')).body.data.some((x) => x.name === 'nope'), 'nothing was written');
  await page.locator('#token').fill(env.TOKEN);
  await page.getByRole('button', { name: 'Use token' }).click();

  step = 'revoke the viewer token';
  await nav('tokens');
  await remove(row(panel('tokens'), 'Name', 'reader'));
  await gone(panel('tokens'), 'Name', 'reader');
  ok(!(await adm('GET', '/v1/tokens')).body.data.some((t) => t.name === 'reader'), 'the token is gone');

  step = 'delete the realm and the control plane';
  await nav('realms');
  await remove(row(panel('realms'), 'Name', 'prod'));
  await gone(panel('realms'), 'Name', 'prod');
  eq((await adm('GET', `/v1/realms/${realm.id}`)).status, 404, 'the realm is gone');
  await nav('control-planes');
  await remove(row(panel('control-planes'), 'Name', 'Billing'));
  await gone(panel('control-planes'), 'Name', 'Billing');
  eq((await adm('GET', `/v2/control-planes/${billing}`)).status, 404, 'the control plane is gone');
  ok(await page.locator('#cp-select option', { hasText: 'Billing' }).count() === 0, 'and no longer offered');
}

async function hostile() {
  const evil = {
    img: '<img src=x onerror="window.__pwned=1">',
    script: '"><script>window.__pwned=2</script>',
    svg: "<svg onload='window.__pwned=3'>",
    bold: '<b onmouseover="window.__pwned=4">bold</b>',
    name: '<iframe src="javascript:window.__pwned=5">',
  };

  step = 'hostile entities made through the Admin API';
  let r = await adm('POST', '/consumers', { username: evil.img, custom_id: evil.script });
  eq(r.status, 201, 'a consumer with markup in its names');
  const consumerId = r.body.id;
  r = await adm('POST', `/consumers/${consumerId}/key-auth`, { key: evil.svg });
  eq(r.status, 201, 'a key with markup');

  step = 'they show as text';
  await page.goto(`${env.GUI}#consumers`);
  const consumers = panel('consumers');
  const evilRow = row(consumers, 'Username', evil.img);
  await evilRow.waitFor();
  eq(await cell(evilRow, 'Custom ID'), evil.script, 'the custom id reads as written');
  await evilRow.getByRole('button', { name: 'Keys' }).click();
  const keys = panel('Keys');
  await row(keys, 'Key', evil.svg).waitFor();
  eq((await keys.locator('h3').textContent()).trim(), `Keys of consumer ${evil.img}`, 'the panel title reads as written');

  step = 'a hostile name typed into the page';
  await newEntity(consumers, 'consumer');
  await fill(consumers, { username: evil.bold, tags: 'gui' });
  await submit(consumers);
  await row(consumers, 'Username', evil.bold).waitFor();
  await notice(`Created consumer ${evil.bold}.`);
  r = await adm('GET', '/consumers');
  ok(r.body.data.some((c) => c.username === evil.bold), 'the Admin API has it, as typed');

  step = 'an error that repeats the input';
  await nav('services');
  await newEntity(panel('services'), 'service');
  await fill(panel('services'), { name: evil.name, url: 'http://127.0.0.1:9/' });
  await panel('services').locator('form.entity-form button[type=submit]').click();
  await until(async () => page.locator('#error').isVisible(), 'the refusal is shown');
  eq(await page.locator('#error').evaluate((e) => e.childElementCount), 0, 'the error is text only');
  eq((await adm('GET', '/services')).body.data, [], 'nothing was stored');
  await shot('hostile-error');

  step = 'delete the hostile consumer (the confirmation quotes it)';
  await nav('consumers');
  await remove(row(panel('consumers'), 'Username', evil.img));
  await gone(panel('consumers'), 'Username', evil.img);
  ok(dialogs.some((d) => d.type === 'confirm' && d.message === `Delete consumer ${evil.img}?`), 'the confirmation reads as written');
  eq((await adm('GET', `/consumers/${consumerId}`)).status, 404, 'the consumer is gone');
  await shot('hostile-consumers');

  step = 'no script ran';
  eq(await page.evaluate(() => window.__pwned), undefined, 'window.__pwned');
  eq(await page.locator('#view img, #view script, #view svg, #view iframe, #view b, #error *, #notice img').count(), 0, 'no element came from data');
  ok(!dialogs.some((d) => d.type !== 'confirm'), `no alert or prompt (${JSON.stringify(dialogs)})`);
}

const scenarios = { traditional, 'control-plane': controlPlane, hostile };
let failed = null;
try {
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  await scenarios[scenario]();
  ok(problems.length === 0, `the page raised no error (${problems.join('; ')})`);
} catch (e) {
  failed = e;
  await shot(`${scenario}-failed`).catch(() => {});
}
await browser.close();
if (failed) {
  console.error(`FAILED ${scenario}: ${failed.stack || failed}`);
  console.error(`page errors: ${JSON.stringify(problems)}`);
  process.exit(1);
}
console.log(`passed ${scenario}`);
