// botframework-directlinejs 0.15.8 with `webSocket: false` (a page whose network blocks
// WebSockets), unmodified, through a gateway with `[polling] hold`: a livestreamed answer
// reaches it as interims then the final, which Direct Line's own polling never delivers.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  SECRET, start, startGateway, until, metric,
} = require('./support');

global.XMLHttpRequest = require('xhr2');
global.WebSocket = require('ws');
const { DirectLine, ConnectionStatus } = require('botframework-directlinejs');

async function pollingGateway() {
  const emulator = await start(
    ['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, '--stream-interval-ms', '40'],
    {},
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'polling-'));
  const config = path.join(dir, 'gateway.toml');
  fs.writeFileSync(config, '[polling]\nhold = "10s"\n');
  const gateway = await startGateway(emulator.address, '127.0.0.1:0', ['--config', config]);
  const env = { emulator, gateway, domain: `${gateway.address}/v3/directline` };
  env.metrics = async () => {
    const line = gateway.lines.find((l) => l.includes('/metrics'));
    return (await fetch(line.match(/http:\/\/\S+\/metrics/)[0])).text();
  };
  env.stop = () => {
    gateway.kill('SIGTERM');
    emulator.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return env;
}

test('webSocket: false: a streamed answer arrives as growing interims, then the final once', { timeout: 90000 }, async () => {
  const env = await pollingGateway();
  let ended = false;
  try {
    const generated = await (await fetch(`${env.domain}/tokens/generate`, { method: 'POST' })).json();
    const directLine = new DirectLine({
      token: generated.token, domain: env.domain, webSocket: false, pollingInterval: 200,
    });
    const activities = [];
    const statuses = [];
    const errors = [];
    const onError = (error) => { if (!ended) errors.push(error); };
    directLine.connectionStatus$.subscribe((status) => statuses.push(status), onError);
    directLine.activity$.subscribe((activity) => activities.push(activity), onError);
    await until('Online', () => statuses.includes(ConnectionStatus.Online));
    await new Promise((resolve, reject) => {
      directLine.postActivity({
        type: 'message', from: { id: 'user' }, text: 'stream 30', deliveryMode: 'stream',
      }).subscribe(resolve, reject);
    });
    const finalText = Array.from({ length: 30 }, (_, i) => `w${i + 1}`).join(' ');
    await until('the final', () => activities.some((a) => a.type === 'message' && a.text === finalText));

    const interims = activities.filter((a) => a.type === 'typing');
    assert.ok(interims.length >= 1, 'interims reached the polling client');
    const sequences = interims.map((a) => a.entities.find((e) => e.type === 'streaminfo').streamSequence);
    assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b), 'in order');
    assert.equal(new Set(sequences).size, sequences.length, 'none twice');
    assert.equal(activities.filter((a) => a.text === finalText && a.type === 'message').length, 1);
    assert.equal(activities[activities.length - 1].text, finalText, 'nothing after the final');
    assert.ok(!statuses.includes(ConnectionStatus.FailedToConnect));
    assert.deepEqual(errors, []);
    assert.ok(metric(await env.metrics(), 'directline_gateway_polls_total{result="activities"}') >= 2);
    ended = true;
    directLine.end();
  } finally {
    ended = true;
    env.stop();
  }
});
