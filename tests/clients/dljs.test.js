// botframework-directlinejs 0.15.8, unmodified, through the gateway: real processes on loopback.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const {
  gatewayWithEmulator, startGateway, freePort, until, metric,
} = require('./support');

// DLJS reads these globals when it is constructed (without both it throws or never gets
// Online under Node). The WebSocket wrapper counts the sockets DLJS opens and the closes
// it sees.
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

// DLJS refreshes its token every 15 minutes, a constant it does not expose. Its `scheduler`
// option is the seam: this one runs that interval's first tick after REFRESH_MS and passes
// every other delay through, so DLJS's own refreshTokenLoop does the refresh.
const REFRESH_MS = 1500;
const DLJS_REFRESH_INTERVAL_MS = 15 * 60 * 1000;
const { async: asyncScheduler } = require(require.resolve('rxjs/scheduler/async', {
  paths: [require.resolve('botframework-directlinejs')],
}));
const fastRefresh = {
  now: () => asyncScheduler.now(),
  schedule: (work, delay, state) =>
    asyncScheduler.schedule(work, delay === DLJS_REFRESH_INTERVAL_MS ? REFRESH_MS : delay, state),
};

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

function post(directLine, text) {
  return new Promise((resolve, reject) => {
    directLine.postActivity({ type: 'message', from: { id: 'user', name: 'User' }, text }).subscribe(
      (id) => (id === 'retry' ? reject(new Error('DLJS had to retry')) : resolve(id)),
      reject,
    );
  });
}

/** A message sent through the gateway's REST route while no client is connected. */
async function postWhileAway(env, conversationId, token) {
  const sent = await fetch(`${env.domain}/conversations/${conversationId}/activities`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'message', from: { id: 'user' }, text: 'while away' }),
  });
  assert.equal(sent.status, 200);
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
    const reconnects = metric(await env.metrics(), 'directline_gateway_upstream_reconnects_total{bot="default",result="ok"}');
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
    await postWhileAway(env, conversationId, token);
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

test('a page reloaded after its tokens expired: refresh through the gateway, then conversationId + watermark', { timeout: 90000 }, async () => {
  // Direct Line tokens of 2 s, so the gateway's expire too while the "page" is closed.
  const env = await gatewayWithEmulator(['--token-ttl-secs', '2']);
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const first = client({ token: generated.token, domain: env.domain });
    await until('Online', () => first.statuses.includes(ConnectionStatus.Online));
    await post(first.directLine, 'before');
    await until('echo', () => first.texts().length >= 2);
    // What the page keeps in sessionStorage.
    const { conversationId, token, watermark } = first.directLine;
    first.end();
    await postWhileAway(env, conversationId, token);
    const activities = () => fetch(`${env.domain}/conversations/${conversationId}/activities`, {
      headers: { authorization: `Bearer ${token}` },
    });
    await until('the stored token expired', async () => (await activities()).status === 403);
    // The reload: the dead token gets a fresh one for the same conversation...
    const refreshed = await fetch(`${env.domain}/tokens/refresh`, {
      method: 'POST', headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(refreshed.status, 200);
    const fresh = await refreshed.json();
    assert.equal(fresh.conversationId, conversationId);
    // ...and DLJS resumes from the stored watermark: what it missed, once, then live.
    const resumed = client({ token: fresh.token, conversationId, watermark, domain: env.domain });
    await until('the missed messages', () => resumed.texts().length >= 2);
    await post(resumed.directLine, 'after');
    await until('live messages', () => resumed.texts().length >= 4);
    assert.deepEqual(resumed.texts(), ['while away', 'echo: while away', 'after', 'echo: after']);
    assert.deepEqual(resumed.errors, []);
    assert.equal(metric(await env.metrics(), 'directline_gateway_token_resumes_total{bot="default",result="ok"}'), 1);
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
    // DLJS waits 3-15 s after a close before it reconnects (PROTOCOL §7.4).
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

test('token refresh through the gateway keeps the conversation working', { timeout: 90000 }, async () => {
  const env = await gatewayWithEmulator([]);
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const seen = client({ token: generated.token, domain: env.domain, scheduler: fastRefresh });
    await until('Online', () => seen.statuses.includes(ConnectionStatus.Online));
    await post(seen.directLine, 'before refresh');
    await until('echo', () => seen.texts().length >= 2);
    const { conversationId } = seen.directLine;
    const conversationToken = seen.directLine.token;
    await until('DLJS refreshed its token', () => seen.directLine.token !== conversationToken);
    const refreshed = seen.directLine.token;
    assert.match(refreshed, /^dlgw1\./, 'the refreshed token is the gateway\'s, not Direct Line\'s');
    const metrics = await env.metrics();
    assert.ok(metric(metrics, 'directline_gateway_tokens_total{bot="default",kind="refreshed"}') >= 1, 'the gateway minted it');
    // DLJS posts with the refreshed token from now on.
    await post(seen.directLine, 'after refresh');
    await until('echo after the refresh', () => seen.texts().length >= 4);
    assert.deepEqual(seen.texts(), ['before refresh', 'echo: before refresh', 'after refresh', 'echo: after refresh']);
    // The refreshed token stays bound to the same conversation: the reconnect route accepts it.
    const reconnect = await fetch(`${env.domain}/conversations/${conversationId}?watermark=${seen.directLine.watermark}`, {
      headers: { authorization: `Bearer ${refreshed}` },
    });
    assert.equal(reconnect.status, 200);
    const body = await reconnect.json();
    assert.ok(body.streamUrl.startsWith(env.domain.replace(/^http/, 'ws')), body.streamUrl);
    assert.ok(!seen.statuses.includes(ConnectionStatus.ExpiredToken));
    assert.deepEqual(seen.errors, []);
    seen.end();
  } finally {
    env.stop();
  }
});
