// botframework-directlinejs 0.15.8, unmodified, through the gateway: real processes on loopback.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');

const BIN = process.env.GATEWAY_BIN || path.join(__dirname, '..', '..', 'target', 'debug', 'directline-gateway');
const SECRET = 'dljs-test-secret-0123456789abcdef';
const WAIT_MS = 30000;

// DLJS reads these globals when it is constructed (ENVIRONMENT.md §2). The WebSocket
// wrapper counts the sockets DLJS opens and the closes it sees.
const sockets = { opened: 0, closed: 0 };
const RealWebSocket = require('ws');
class CountingWebSocket extends RealWebSocket {
  constructor(...args) {
    super(...args);
    sockets.opened += 1;
    this.on('close', () => { sockets.closed += 1; });
  }
}
global.WebSocket = CountingWebSocket;
global.XMLHttpRequest = require('xhr2');
const { DirectLine, ConnectionStatus } = require('botframework-directlinejs');

/** Starts a process and resolves with the first http://… address it prints. */
function start(args, env) {
  const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start`)), WAIT_MS);
    child.lines = [];
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      child.lines.push(line);
      const match = line.match(/http:\/\/127\.0\.0\.1:\d+/);
      if (match && !child.address) {
        child.address = match[0];
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on('exit', (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

function startGateway(upstream, listen) {
  return start(
    ['--listen', listen, '--admin-listen', '127.0.0.1:0', '--upstream', upstream],
    { DIRECTLINE_SECRET: SECRET, DIRECTLINE_GATEWAY_TOKEN_KEY: 'dljs-test-token-key-0123456789abcdef', RUST_LOG: 'warn' },
  );
}

async function gatewayWithEmulator(faults, listen = '127.0.0.1:0') {
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, ...faults], {});
  const env = { emulator, gateway: await startGateway(emulator.address, listen) };
  env.domain = `${env.gateway.address}/v3/directline`;
  env.stop = () => { env.gateway.kill('SIGTERM'); emulator.kill('SIGTERM'); };
  return env;
}

/** A port nothing listens on right now, for a gateway that must come back on the same one. */
function freePort() {
  return new Promise((resolve) => {
    const server = require('node:net').createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A DirectLine client with its activities, statuses and (before end()) errors recorded. */
function client(options) {
  const directLine = new DirectLine({ webSocket: true, ...options });
  const seen = { directLine, activities: [], statuses: [], errors: [], ended: false };
  const onError = (error) => { if (!seen.ended) seen.errors.push(error); };
  directLine.connectionStatus$.subscribe((status) => seen.statuses.push(status), onError);
  directLine.activity$.subscribe((activity) => seen.activities.push(activity), onError);
  seen.texts = () => seen.activities.filter((a) => a.type === 'message').map((a) => a.text);
  seen.end = () => { seen.ended = true; directLine.end(); };
  return seen;
}

function until(what, check) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() - started > WAIT_MS) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

function post(directLine, text) {
  return new Promise((resolve, reject) => {
    directLine.postActivity({ type: 'message', from: { id: 'user', name: 'User' }, text }).subscribe(
      (id) => (id === 'retry' ? reject(new Error('DLJS had to retry')) : resolve(id)),
      reject,
    );
  });
}

async function converse(faults, count) {
  const env = await gatewayWithEmulator(faults);
  sockets.opened = 0;
  sockets.closed = 0;
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const directLine = new DirectLine({ token: generated.token, domain: env.domain, webSocket: true });
    const statuses = [];
    const errors = [];
    let ended = false;
    // After end(), DLJS errors its streams with "conversation ended": expected then, a failure before.
    const onError = (error) => { if (!ended) errors.push(error); };
    directLine.connectionStatus$.subscribe((status) => statuses.push(status), onError);
    const activities = [];
    directLine.activity$.subscribe((activity) => activities.push(activity), onError);
    await until('Online', () => statuses.includes(ConnectionStatus.Online));
    const messages = Array.from({ length: count }, (_, i) => `message ${i}`);
    for (const text of messages) {
      await post(directLine, text);
    }
    const expected = messages.flatMap((m) => [m, `echo: ${m}`]);
    const texts = () => activities.filter((a) => a.type === 'message').map((a) => a.text);
    await until(`${expected.length} messages`, () => texts().length >= expected.length);
    const metricsLine = env.gateway.lines.find((l) => l.includes('/metrics'));
    const metrics = await (await fetch(metricsLine.match(/http:\/\/\S+\/metrics/)[0])).text();
    const reconnects = Number((metrics.match(/upstream_reconnects_total\{result="ok"\} (\d+)/) || [0, 0])[1]);
    const result = { reconnects, texts: texts(), ids: activities.map((a) => a.id), statuses: [...statuses], sockets: { ...sockets }, expected, errors: [...errors] };
    ended = true;
    directLine.end();
    return result;
  } finally {
    env.stop();
  }
}

test('50 messages: every echo once, Online, never FailedToConnect', { timeout: 90000 }, async () => {
  const r = await converse([], 50);
  assert.deepEqual(r.texts, r.expected);
  assert.equal(new Set(r.ids).size, r.ids.length, 'no duplicate activity ids');
  assert.ok(r.statuses.includes(ConnectionStatus.Online));
  assert.ok(!r.statuses.includes(ConnectionStatus.FailedToConnect));
  assert.deepEqual(r.errors, []);
});

test('upstream dropped every 3 frames: every echo once and the client socket never closes', { timeout: 90000 }, async () => {
  const r = await converse(['--drop-after-frames', '3'], 50);
  assert.deepEqual(r.texts, r.expected);
  assert.equal(new Set(r.ids).size, r.ids.length, 'no duplicate activity ids');
  assert.ok(r.reconnects >= 10, `the gateway resumed upstream many times (${r.reconnects})`);
  assert.equal(r.sockets.opened, 1, 'DLJS opened exactly one WebSocket');
  assert.equal(r.sockets.closed, 0, 'and never saw it close');
  assert.ok(!r.statuses.includes(ConnectionStatus.FailedToConnect));
  assert.deepEqual(r.errors, []);
});

test('resume with conversationId + watermark: only later activities arrive', { timeout: 90000 }, async () => {
  const env = await gatewayWithEmulator([]);
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const first = client({ token: generated.token, domain: env.domain });
    await until('Online', () => first.statuses.includes(ConnectionStatus.Online));
    await post(first.directLine, 'before');
    await until('echo', () => first.texts().length >= 2);
    const { conversationId, token, watermark } = first.directLine;
    assert.ok(watermark, 'DLJS tracked a watermark from the gateway stream');
    first.end();
    // Sent while no client is connected, through the gateway's REST route.
    const sent = await fetch(`${env.domain}/conversations/${conversationId}/activities`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'message', from: { id: 'user' }, text: 'while away' }),
    });
    assert.equal(sent.status, 200);
    const resumed = client({ token, conversationId, watermark, domain: env.domain });
    await until('the missed messages', () => resumed.texts().length >= 2);
    await post(resumed.directLine, 'after');
    await until('live messages', () => resumed.texts().length >= 4);
    assert.deepEqual(resumed.texts(), ['while away', 'echo: while away', 'after', 'echo: after']);
    assert.deepEqual(resumed.errors, []);
    resumed.end();
  } finally {
    env.stop();
  }
});

test('gateway restart: the client resumes by itself and nothing is lost', { timeout: 120000 }, async () => {
  const port = await freePort();
  const env = await gatewayWithEmulator([], `127.0.0.1:${port}`);
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const seen = client({ token: generated.token, domain: env.domain });
    await until('Online', () => seen.statuses.includes(ConnectionStatus.Online));
    await post(seen.directLine, 'before restart');
    await until('echo', () => seen.texts().length >= 2);
    const { conversationId, token } = seen.directLine;
    const stopped = new Promise((resolve) => env.gateway.on('exit', resolve));
    env.gateway.kill('SIGTERM');
    await stopped;
    // Same port, same token key: the client's token and watermark stay valid.
    env.gateway = await startGateway(env.emulator.address, `127.0.0.1:${port}`);
    const sent = await fetch(`${env.domain}/conversations/${conversationId}/activities`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'message', from: { id: 'user' }, text: 'during the restart' }),
    });
    assert.equal(sent.status, 200);
    // DLJS waits 3-15 s after a close before it reconnects (spec §7.4).
    await until('the message sent during the restart', () => seen.texts().length >= 4);
    await post(seen.directLine, 'after restart');
    await until('live messages', () => seen.texts().length >= 6);
    assert.deepEqual(seen.texts(), [
      'before restart', 'echo: before restart',
      'during the restart', 'echo: during the restart',
      'after restart', 'echo: after restart',
    ]);
    assert.ok(!seen.statuses.includes(ConnectionStatus.FailedToConnect));
    seen.end();
  } finally {
    env.stop();
  }
});
