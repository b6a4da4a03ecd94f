// Browsers through the gateway, in headless Chromium (playwright-core): botframework-webchat
// 4.18.1, unmodified, on a page on loopback that gets a token from the gateway and renders
// WebChat with its `domain` pointed at the gateway; and the gateway's own demo page. The tests
// type into the send box like a person.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { chromium } = require('playwright-core');
const {
  SECRET, gatewayWithCopilotAgent, gatewayWithEmulator, metric, start, startGateway, until,
} = require('./support');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// Without the background-networking flags Chromium keeps dialling Google on a closed network.
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const ARTIFACTS = path.join(__dirname, 'artifacts');
const WEBCHAT_JS = path.join(__dirname, 'node_modules', 'botframework-webchat', 'dist', 'webchat.js');
const PAGE = path.join(__dirname, 'webchat', 'index.html');

/** Serves the test page and WebChat's UMD bundle from node_modules on loopback. */
function servePage() {
  const files = { '/': [PAGE, 'text/html'], '/webchat.js': [WEBCHAT_JS, 'text/javascript'] };
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

/** A transcript bubble's paragraph with exactly this text (the screen-reader copy is a div). */
function bubble(page, text) {
  const exact = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  return page.locator('p', { hasText: exact });
}

/** The user's outgoing activities as WebChat's store holds them, with their send status. */
function sendStatuses(page) {
  return page.evaluate(() => window.store.getState().activities
    .filter((a) => a.from && a.from.role === 'user' && a.type === 'message')
    .map((a) => ({ text: a.text, status: a.channelData && a.channelData['webchat:send-status'] })));
}

async function chat(faults, messages, screenshot, makeEnv = gatewayWithEmulator) {
  const env = await makeEnv(faults);
  const server = await servePage();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 720, height: 640 } });
    const sockets = { opened: 0, closed: 0 };
    page.on('websocket', (socket) => {
      sockets.opened += 1;
      socket.on('close', () => { sockets.closed += 1; });
    });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    const { port } = server.address();
    await page.goto(`http://127.0.0.1:${port}/?domain=${encodeURIComponent(env.domain)}`);
    const input = page.locator('[data-id="webchat-sendbox-input"]');
    await input.waitFor({ timeout: 30000 });
    for (const text of messages) {
      await input.fill(text);
      await input.press('Enter');
      await bubble(page, `echo: ${text}`).first().waitFor({ timeout: 30000 });
    }
    // WebChat marks an activity sent when its own echo comes back on the stream; a lost echo
    // stays "sending" and turns "Send failed" after its 20 s send timeout.
    let statuses = [];
    await until('every message marked sent', async () => {
      statuses = await sendStatuses(page);
      return statuses.length === messages.length && statuses.every((s) => s.status === 'sent');
    });
    assert.deepEqual(statuses.map((s) => s.text), messages);
    assert.equal(await page.getByText('Send failed', { exact: false }).count(), 0);
    for (const text of messages) {
      assert.equal(await bubble(page, text).count(), 1, `"${text}" shown once`);
      assert.equal(await bubble(page, `echo: ${text}`).count(), 1, `"echo: ${text}" shown once`);
    }
    assert.equal(await page.evaluate(() => window.store.getState().connectivityStatus), 'connected');
    // WebChat's connectivity notice lags its state by a debounce; the screenshot waits for it.
    await page.locator('.webchat__connectivityStatus').waitFor({ state: 'hidden', timeout: 30000 });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, screenshot) });
    const metrics = await env.metrics();
    const reconnects = metric(metrics, 'directline_gateway_upstream_reconnects_total{bot="default",result="ok"}');
    return { sockets, reconnects, metrics, pageErrors, startError: await page.evaluate(() => window.startError) };
  } finally {
    await browser.close();
    server.close();
    env.stop();
  }
}

test('WebChat in Chromium: typed messages get their echoes and are marked sent', { timeout: 120000 }, async () => {
  const r = await chat([], ['hello', 'how are you?', 'bye'], 'webchat.png');
  assert.equal(r.startError, undefined);
  assert.equal(r.sockets.opened, 1, 'WebChat opened one WebSocket, to the gateway');
  assert.equal(r.sockets.closed, 0);
  assert.deepEqual(r.pageErrors, []);
});

test('WebChat in Chromium: upstream dropped after every frame, still sent and never "Send failed"', { timeout: 120000 }, async () => {
  const r = await chat(['--drop-after-frames', '1'], ['first', 'second', 'third'], 'webchat-drops.png');
  assert.equal(r.startError, undefined);
  assert.ok(r.reconnects >= 3, `the gateway resumed upstream while messages were in flight (${r.reconnects})`);
  assert.equal(r.sockets.opened, 1, 'WebChat kept its one WebSocket');
  assert.equal(r.sockets.closed, 0, 'and never saw it close');
  assert.deepEqual(r.pageErrors, []);
});

test('WebChat in Chromium with a Copilot Studio agent: token endpoint, discovered Direct Line, upstream drops', { timeout: 120000 }, async () => {
  // The page is the same: only its domain (the gateway) and where its token comes from.
  const r = await chat(['--drop-after-frames', '1'], ['hi agent', 'and again'], 'webchat-copilot.png', gatewayWithCopilotAgent);
  assert.equal(r.startError, undefined);
  assert.ok(r.reconnects >= 2, `the gateway resumed upstream with the conversation token (${r.reconnects})`);
  assert.equal(r.sockets.opened, 1, 'WebChat kept its one WebSocket');
  assert.equal(r.sockets.closed, 0);
  assert.ok(metric(r.metrics, 'directline_gateway_discoveries_total{bot="default",result="ok"}') >= 1, 'discovered');
  assert.ok(metric(r.metrics, 'directline_gateway_upstream_requests_total{bot="default",route="tokens_generate",status="2xx"}') >= 1, 'the token endpoint minted the token');
  assert.deepEqual(r.pageErrors, []);
});

test('WebChat in Chromium reloaded after its tokens expired keeps its conversation and history', { timeout: 120000 }, async () => {
  // Direct Line tokens of 2 s, so the page's token is dead when it reloads.
  const env = await gatewayWithEmulator(['--token-ttl-secs', '2']);
  const server = await servePage();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 720, height: 640 } });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    const { port } = server.address();
    await page.goto(`http://127.0.0.1:${port}/?domain=${encodeURIComponent(env.domain)}`);
    const input = page.locator('[data-id="webchat-sendbox-input"]');
    await input.waitFor({ timeout: 30000 });
    await input.fill('before the reload');
    await input.press('Enter');
    await bubble(page, 'echo: before the reload').first().waitFor({ timeout: 30000 });
    const saved = await page.evaluate(() => JSON.parse(sessionStorage.getItem('chat')));
    await until('the stored token expired', async () => {
      const reply = await fetch(`${env.domain}/conversations/${saved.conversationId}/activities`, {
        headers: { authorization: `Bearer ${saved.token}` },
      });
      return reply.status === 403;
    });
    await page.reload();
    await input.waitFor({ timeout: 30000 });
    // The history is back, once, and the conversation carries on.
    await bubble(page, 'echo: before the reload').first().waitFor({ timeout: 30000 });
    await input.fill('after the reload');
    await input.press('Enter');
    await bubble(page, 'echo: after the reload').first().waitFor({ timeout: 30000 });
    for (const text of ['before the reload', 'echo: before the reload', 'after the reload', 'echo: after the reload']) {
      assert.equal(await bubble(page, text).count(), 1, `"${text}" shown once`);
    }
    assert.equal(await page.evaluate(() => window.directLine.conversationId), saved.conversationId);
    assert.equal(metric(await env.metrics(), 'directline_gateway_token_resumes_total{bot="default",result="ok"}'), 1);
    assert.equal(await page.evaluate(() => window.startError), undefined);
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
    server.close();
    env.stop();
  }
});

test('the demo page on / of the no-argument run chats with the echo bot', { timeout: 120000 }, async () => {
  // The no-argument run, as the README's first command starts it (ports aside).
  const env = { ...process.env };
  delete env.DIRECTLINE_SECRET;
  const gateway = await start(['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'], env);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 720, height: 480 } });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    await page.goto(`${gateway.address}/`);
    await page.locator('#status', { hasText: 'online' }).waitFor({ timeout: 30000 });
    for (const text of ['hello from the demo', 'and again']) {
      await page.locator('#text').fill(text);
      await page.locator('#text').press('Enter');
      await page.locator('#transcript li', { hasText: `echo: ${text}` }).waitFor({ timeout: 30000 });
    }
    const items = await page.locator('#transcript li').allInnerTexts();
    assert.deepEqual(items, ['hello from the demo', 'echo: hello from the demo', 'and again', 'echo: and again']);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo.png') });
    // A reload keeps the conversation: history shown once, then it carries on.
    await page.reload();
    await page.locator('#status', { hasText: 'online' }).waitFor({ timeout: 30000 });
    await page.locator('#transcript li', { hasText: 'echo: and again' }).waitFor({ timeout: 30000 });
    await page.locator('#text').fill('after the reload');
    await page.locator('#text').press('Enter');
    await page.locator('#transcript li', { hasText: 'echo: after the reload' }).waitFor({ timeout: 30000 });
    assert.deepEqual(await page.locator('#transcript li').allInnerTexts(), [
      'hello from the demo', 'echo: hello from the demo', 'and again', 'echo: and again',
      'after the reload', 'echo: after the reload',
    ]);
    assert.equal(await page.locator('#bot').innerText(), 'default');
    // Sent with the button: the focus comes back to the input for the next message.
    await page.locator('#text').fill('clicked');
    await page.locator('#send').click();
    await page.locator('#transcript li', { hasText: 'echo: clicked' }).waitFor({ timeout: 30000 });
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'text', null, { timeout: 30000 });
    // The second demo bot's page says which bot it is.
    await page.goto(`${gateway.address}/bots/second/`);
    await page.locator('#status', { hasText: 'online' }).waitFor({ timeout: 30000 });
    assert.equal(await page.locator('#bot').innerText(), 'second');
    assert.match(await page.title(), /second/);
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
    gateway.kill('SIGTERM');
  }
});

test('WebChat in Chromium renders a livestreamed answer as one growing bubble across upstream drops', { timeout: 120000 }, async () => {
  // WebChat 4.18.1 keys a `typing` with text and `channelData.streamId` to its stream's first
  // interim, so every interim and the final replace one bubble. The page does not ask for
  // streaming: the gateway's `delivery_mode = "stream"` does. The bot answers 30 chunks 50 ms
  // apart in the channelData encoding, and its stream drops after every 8 frames.
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'gw-webchat-live-'));
  const config = path.join(dir, 'gateway.toml');
  fs.writeFileSync(config, 'delivery_mode = "stream"\n');
  const emulator = await start([
    'emulator', '--listen', '127.0.0.1:0', '--secret', SECRET,
    '--stream-interval-ms', '50', '--drop-after-frames', '8',
  ], {});
  const gateway = await startGateway(emulator.address, '127.0.0.1:0', ['--config', config]);
  const domain = `${gateway.address}/v3/directline`;
  const server = await servePage();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  const answer = Array.from({ length: 30 }, (_, i) => `w${i + 1}`).join(' ');
  try {
    const page = await browser.newPage({ viewport: { width: 720, height: 640 } });
    const sockets = { opened: 0, closed: 0 };
    page.on('websocket', (socket) => {
      sockets.opened += 1;
      socket.on('close', () => { sockets.closed += 1; });
    });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    const { port } = server.address();
    await page.goto(`http://127.0.0.1:${port}/?domain=${encodeURIComponent(domain)}`);
    const input = page.locator('[data-id="webchat-sendbox-input"]');
    await input.waitFor({ timeout: 30000 });
    // Every change to the transcript: how many answer paragraphs (`w1 …`) are on screen at
    // once, and each text one showed.
    await page.evaluate(() => {
      window.answerTexts = new Set();
      window.mostAnswerBubbles = 0;
      const look = () => {
        const shown = [...document.querySelectorAll('p')].map((p) => p.textContent)
          .filter((text) => /^w1( w\d+)*$/.test(text));
        shown.forEach((text) => window.answerTexts.add(text));
        window.mostAnswerBubbles = Math.max(window.mostAnswerBubbles, shown.length);
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true });
    });
    await input.fill('stream 30 channeldata');
    await input.press('Enter');
    await bubble(page, answer).first().waitFor({ timeout: 30000 });
    // Past the final, nothing more may change the transcript: a later echo marks the end.
    await input.fill('after the answer');
    await input.press('Enter');
    await bubble(page, 'echo: after the answer').first().waitFor({ timeout: 30000 });
    assert.equal(await bubble(page, answer).count(), 1, 'the final text shown once');
    const seen = await page.evaluate(() => ({ texts: [...window.answerTexts], most: window.mostAnswerBubbles }));
    assert.equal(seen.most, 1, 'never two answer bubbles at once');
    assert.ok(seen.texts.length >= 2, `the bubble grew (${seen.texts.length} texts shown)`);
    for (const text of seen.texts) assert.ok(answer.startsWith(text), `a prefix of the answer: ${text}`);
    assert.equal(await page.getByText('Send failed', { exact: false }).count(), 0);
    await page.locator('.webchat__connectivityStatus').waitFor({ state: 'hidden', timeout: 30000 });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'webchat-livestream.png') });
    const line = gateway.lines.find((l) => l.includes('/metrics'));
    const metrics = await (await fetch(line.match(/http:\/\/\S+\/metrics/)[0])).text();
    const reconnects = metric(metrics, 'directline_gateway_upstream_reconnects_total{bot="default",result="ok"}');
    assert.ok(reconnects >= 2, `the upstream dropped mid-answer and was resumed (${reconnects})`);
    assert.ok(metric(metrics, 'directline_gateway_stream_interims_relayed_total') >= 1);
    assert.equal(sockets.opened, 1, 'WebChat kept its one WebSocket');
    assert.equal(sockets.closed, 0);
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
    server.close();
    gateway.kill('SIGTERM');
    emulator.kill('SIGTERM');
  }
});
