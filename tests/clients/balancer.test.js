// botframework-directlinejs through two gateway replicas behind a plain TCP balancer (no
// affinity): a second tab (a reload) of a conversation lands on the other replica while the
// first tab stays open. Both replicas then hold a hub for the conversation; the emulator,
// like Direct Line, closes the older upstream socket with `collision`, and that replica's
// hub polls instead of taking it back. Both tabs must get every activity once.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { SECRET, start, startGateway, until, metric } = require('./support');

global.WebSocket = require('ws');
global.XMLHttpRequest = require('xhr2');
const { DirectLine, ConnectionStatus } = require('botframework-directlinejs');

/**
 * A TCP balancer on 127.0.0.1:0 sending each new connection to `backends[target]`; moving
 * `target` is a balancer sending the next connections (a reload) elsewhere, as one without
 * affinity may. Bytes are copied untouched.
 */
function balancer(backends) {
  const lb = { target: 0, sockets: new Set() };
  lb.server = net.createServer((client) => {
    const { port } = new URL(backends[lb.target]);
    const upstream = net.connect(Number(port), '127.0.0.1');
    for (const s of [client, upstream]) {
      lb.sockets.add(s);
      s.on('close', () => lb.sockets.delete(s));
      s.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream).pipe(client);
  });
  return new Promise((resolve) => lb.server.listen(0, '127.0.0.1', () => {
    lb.address = `http://127.0.0.1:${lb.server.address().port}`;
    lb.close = () => { lb.server.close(); for (const s of lb.sockets) s.destroy(); };
    resolve(lb);
  }));
}

function client(options) {
  const directLine = new DirectLine({ webSocket: true, ...options });
  const seen = { directLine, activities: [], statuses: [], errors: [], ended: false };
  directLine.connectionStatus$.subscribe((s) => seen.statuses.push(s), (e) => { if (!seen.ended) seen.errors.push(e); });
  directLine.activity$.subscribe((a) => seen.activities.push(a), (e) => { if (!seen.ended) seen.errors.push(e); });
  seen.texts = () => seen.activities.filter((a) => a.type === 'message').map((a) => a.text);
  seen.end = () => { seen.ended = true; directLine.end(); };
  return seen;
}

function post(directLine, text) {
  return new Promise((resolve, reject) => {
    directLine.postActivity({ type: 'message', from: { id: 'user', name: 'User' }, text })
      .subscribe((id) => (id === 'retry' ? reject(new Error('DLJS had to retry')) : resolve(id)), reject);
  });
}

async function metricsOf(gateway) {
  const line = gateway.lines.find((l) => l.includes('/metrics'));
  return (await fetch(line.match(/http:\/\/\S+\/metrics/)[0])).text();
}

test('DLJS: a reload through another replica while the first tab stays open', { timeout: 120000 }, async () => {
  // Retries beyond the test's length, so the stream opens are exactly one per replica.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlgw-balancer-'));
  const config = path.join(dir, 'gateway.toml');
  fs.writeFileSync(config, '[stream]\ncollision_poll_interval = "200ms"\ncollision_retry_base = "10m"\ncollision_retry_max = "10m"\n');
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET], {});
  const replicas = [];
  let lb;
  const tabs = [];
  try {
    for (let i = 0; i < 2; i += 1) {
      replicas.push(await startGateway(emulator.address, '127.0.0.1:0', ['--config', config]));
    }
    lb = await balancer(replicas.map((r) => r.address));
    const domain = `${lb.address}/v3/directline`;
    const generated = await (await fetch(`${domain}/tokens/generate`, { method: 'POST' })).json();

    const first = client({ token: generated.token, domain });
    tabs.push(first);
    await until('the first tab Online', () => first.statuses.includes(ConnectionStatus.Online));
    await post(first.directLine, 'before the reload');
    await until('the first echo', () => first.texts().includes('echo: before the reload'));

    // The reload: same conversation, new page, and the balancer now sends it elsewhere.
    lb.target = 1;
    const second = client({ token: generated.token, conversationId: generated.conversationId, domain });
    tabs.push(second);
    await until('the second tab Online', () => second.statuses.includes(ConnectionStatus.Online));
    await until('replica 0 lost the stream to replica 1 and polls', async () =>
      metric(await metricsOf(replicas[0]), 'directline_gateway_stream_hubs_polling') === 1);

    const messages = [];
    for (let i = 0; i < 6; i += 1) {
      const tab = i % 2 === 0 ? first : second;
      const text = `message ${i} from tab ${i % 2}`;
      messages.push(text);
      await post(tab.directLine, text);
    }
    const expected = ['before the reload', 'echo: before the reload', ...messages.flatMap((m) => [m, `echo: ${m}`])];
    for (const [index, tab] of tabs.entries()) {
      const last = expected[expected.length - 1];
      await until(`tab ${index}: the last echo`, () => tab.texts().includes(last));
      // A reload without a watermark may start after the history; from there on, all of it.
      const texts = tab.texts();
      assert.ok(texts.length >= 2 * messages.length, `tab ${index} saw ${texts}`);
      assert.deepEqual(texts, expected.slice(expected.length - texts.length),
        `tab ${index} saw every message once, in order`);
      const ids = tab.activities.map((a) => a.id);
      assert.equal(new Set(ids).size, ids.length, `tab ${index}: no duplicate ids`);
      assert.ok(!tab.statuses.includes(ConnectionStatus.FailedToConnect));
      assert.deepEqual(tab.errors, []);
    }
    const scrapes = await Promise.all(replicas.map(metricsOf));
    const sum = (series) => scrapes.reduce((total, text) => total + metric(text, series), 0);
    assert.equal(sum('directline_gateway_upstream_stream_opens_total{bot="default"}'), 2,
      'one upstream stream open per replica');
    assert.equal(sum('directline_gateway_upstream_stream_collisions_total{bot="default"}'), 1);
  } finally {
    for (const tab of tabs) tab.end();
    if (lb) lb.close();
    for (const r of replicas) r.kill('SIGTERM');
    emulator.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// The page browser.test.js serves (WebChat 4.18.1 from node_modules, token and
// conversation kept in sessionStorage so a reload resumes the same conversation).
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function servePage() {
  const files = {
    '/': [path.join(__dirname, 'webchat', 'index.html'), 'text/html'],
    '/webchat.js': [path.join(__dirname, 'node_modules', 'botframework-webchat', 'dist', 'webchat.js'), 'text/javascript'],
  };
  const server = http.createServer((req, res) => {
    const file = files[new URL(req.url, 'http://page').pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': file[1] });
    fs.createReadStream(file[0]).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function bubble(page, text) {
  const exact = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  return page.locator('p', { hasText: exact });
}

async function say(page, text) {
  const input = page.locator('[data-id="webchat-sendbox-input"]');
  await input.fill(text);
  await input.press('Enter');
}

test('WebChat: a second tab (a reload) through another replica while the first stays open', { timeout: 120000 }, async () => {
  const { chromium } = require('playwright-core');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlgw-balancer-'));
  const config = path.join(dir, 'gateway.toml');
  fs.writeFileSync(config, '[stream]\ncollision_poll_interval = "200ms"\ncollision_retry_base = "10m"\ncollision_retry_max = "10m"\n');
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET], {});
  const replicas = [];
  let lb;
  let browser;
  const server = await servePage();
  try {
    for (let i = 0; i < 2; i += 1) {
      replicas.push(await startGateway(emulator.address, '127.0.0.1:0', ['--config', config]));
    }
    lb = await balancer(replicas.map((r) => r.address));
    const url = `http://127.0.0.1:${server.address().port}/?domain=${encodeURIComponent(`${lb.address}/v3/directline`)}`;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const pageErrors = [];
    const firstSockets = { opened: 0, closed: 0 };
    const first = await browser.newPage({ viewport: { width: 720, height: 640 } });
    first.on('pageerror', (error) => pageErrors.push(String(error)));
    first.on('websocket', (socket) => {
      firstSockets.opened += 1;
      socket.on('close', () => { firstSockets.closed += 1; });
    });
    await first.goto(url);
    await first.locator('[data-id="webchat-sendbox-input"]').waitFor({ timeout: 30000 });
    await say(first, 'from the first tab');
    await bubble(first, 'echo: from the first tab').first().waitFor({ timeout: 30000 });

    // The second tab resumes the same conversation (what a reload reads from sessionStorage),
    // and the balancer sends it to the other replica.
    const saved = await first.evaluate(() => sessionStorage.getItem('chat'));
    lb.target = 1;
    const second = await browser.newPage({ viewport: { width: 720, height: 640 } });
    second.on('pageerror', (error) => pageErrors.push(String(error)));
    await second.addInitScript((chat) => sessionStorage.setItem('chat', chat), saved);
    await second.goto(url);
    await second.locator('[data-id="webchat-sendbox-input"]').waitFor({ timeout: 30000 });
    await bubble(second, 'echo: from the first tab').first().waitFor({ timeout: 30000 });
    await until('replica 0 lost the stream to replica 1 and polls', async () =>
      metric(await metricsOf(replicas[0]), 'directline_gateway_stream_hubs_polling') === 1);

    await say(second, 'from the second tab');
    await say(first, 'from the first tab again');
    const texts = ['from the first tab', 'from the second tab', 'from the first tab again'];
    for (const page of [first, second]) {
      for (const text of texts) {
        await bubble(page, `echo: ${text}`).first().waitFor({ timeout: 30000 });
      }
    }
    for (const [index, page] of [first, second].entries()) {
      for (const text of texts.flatMap((t) => [t, `echo: ${t}`])) {
        assert.equal(await bubble(page, text).count(), 1, `tab ${index}: "${text}" shown once`);
      }
      assert.equal(await page.getByText('Send failed', { exact: false }).count(), 0);
      assert.equal(await page.evaluate(() => window.store.getState().connectivityStatus), 'connected');
      assert.equal(await page.evaluate(() => window.startError), undefined);
    }
    assert.equal(firstSockets.opened, 1, 'the first tab kept its one WebSocket');
    assert.equal(firstSockets.closed, 0, 'and never saw it close');
    assert.deepEqual(pageErrors, []);
    const scrapes = await Promise.all(replicas.map(metricsOf));
    const sum = (series) => scrapes.reduce((total, text) => total + metric(text, series), 0);
    assert.equal(sum('directline_gateway_upstream_stream_opens_total{bot="default"}'), 2,
      'one upstream stream open per replica');
  } finally {
    if (browser) await browser.close();
    server.close();
    if (lb) lb.close();
    for (const r of replicas) r.kill('SIGTERM');
    emulator.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
