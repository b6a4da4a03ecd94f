// Livestreamed answers through the gateway with botframework-directlinejs 0.15.8, which
// predates its `streaming` option: one page sets `deliveryMode` itself, the other does not
// and the gateway's `delivery_mode = "stream"` asks for it.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  SECRET, start, startGateway, until,
} = require('./support');

global.WebSocket = require('ws');
global.XMLHttpRequest = require('xhr2');
const { DirectLine } = require('botframework-directlinejs');

/** The stream fields of an activity, from its streaminfo entity or its channelData. */
function streamFields(activity) {
  const entity = (activity.entities || []).find((e) => e.type === 'streaminfo');
  return entity || (activity.channelData && activity.channelData.streamType ? activity.channelData : undefined);
}

async function environment(configText) {
  const emulator = await start(
    ['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, '--stream-interval-ms', '5'], {},
  );
  const extra = [];
  if (configText) {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-live-')), 'gateway.toml');
    fs.writeFileSync(file, configText);
    extra.push('--config', file);
  }
  const gateway = await startGateway(emulator.address, '127.0.0.1:0', extra);
  return {
    domain: `${gateway.address}/v3/directline`,
    stop: () => { gateway.kill('SIGTERM'); emulator.kill('SIGTERM'); },
  };
}

async function token(domain) {
  const reply = await fetch(`${domain}/tokens/generate`, { method: 'POST' });
  assert.equal(reply.status, 200);
  return (await reply.json()).token;
}

/** Posts `stream 20` (with `deliveryMode` when given) and collects the answer. */
async function streamedAnswer(env, deliveryMode) {
  const directLine = new DirectLine({ token: await token(env.domain), domain: env.domain, webSocket: true });
  const activities = [];
  // end() errors every subscription with "conversation ended": expected, and ignored.
  const ignore = () => {};
  directLine.activity$.subscribe((a) => activities.push(a), ignore);
  directLine.connectionStatus$.subscribe(ignore, ignore);
  const activity = { type: 'message', from: { id: 'user' }, text: 'stream 20' };
  if (deliveryMode) activity.deliveryMode = deliveryMode;
  await new Promise((resolve, reject) => directLine.postActivity(activity).subscribe(resolve, reject));
  const isFinal = (a) => a.type === 'message' && streamFields(a) && streamFields(a).streamType === 'final';
  const isAnswer = (a) => a.type === 'message' && a.from.role === 'bot';
  await until('the answer', () => activities.some(isAnswer));
  directLine.end();
  const interims = activities.filter((a) => a.type === 'typing' && streamFields(a));
  const finals = activities.filter(isFinal);
  return { interims, finals };
}

function assertStreamed({ interims, finals }) {
  assert.equal(finals.length, 1);
  assert.equal(finals[0].text.split(' ').length, 20);
  assert.ok(interims.length >= 1, 'at least one interim');
  let last = 0;
  for (const interim of interims) {
    const { streamSequence } = streamFields(interim);
    assert.ok(streamSequence > last, 'in order');
    assert.equal(interim.text.split(' ').length, streamSequence, 'cumulative text');
    last = streamSequence;
  }
}

test('a page that sets deliveryMode itself gets the answer streamed', async () => {
  const env = await environment();
  try {
    assertStreamed(await streamedAnswer(env, 'stream'));
    const plain = await streamedAnswer(env, undefined);
    assert.deepEqual([plain.interims.length, plain.finals.length], [0, 0], 'not streamed without it');
  } finally {
    env.stop();
  }
});

test('a page that does not, behind delivery_mode = "stream", gets it streamed too', async () => {
  const env = await environment('delivery_mode = "stream"\n');
  try {
    assertStreamed(await streamedAnswer(env, undefined));
  } finally {
    env.stop();
  }
});
