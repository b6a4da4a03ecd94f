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

async function gatewayWithEmulator(faults) {
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, ...faults], {});
  const gateway = await start(
    ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--upstream', emulator.address],
    { DIRECTLINE_SECRET: SECRET, DIRECTLINE_GATEWAY_TOKEN_KEY: 'dljs-test-token-key-0123456789abcdef', RUST_LOG: 'warn' },
  );
  return { emulator, gateway, domain: `${gateway.address}/v3/directline`, stop: () => { gateway.kill('SIGTERM'); emulator.kill('SIGTERM'); } };
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
