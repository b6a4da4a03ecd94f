// What a rolling restart costs a client: botframework-directlinejs 0.15.8 clients talk to
// two gateway replicas through a tiny round-robin TCP load balancer; each replica in turn is
// replaced as a Kubernetes rolling update with maxSurge 1 / maxUnavailable 0 does: a new one
// started and added, the old one taken out of the pool (readiness) and sent SIGTERM, and the
// next one replaced as soon as the new one is up, while the old one may still be draining.
// Every client posts a message every POST_EVERY_MS and measures how long the bot's echo
// takes to reach it: the client-visible gap. Not a test: it prints figures (docs/BENCHMARKS.md, "Rolling restart").
//
//   npm --prefix tests/clients ci && cargo build --release
//   GATEWAY_BIN=target/release/directline-gateway node benches/rolling-restart.js \
//     [drain_period 20s] [drain_spread 5s] [clients 10] [post every ms 1000]
//
// Loopback only; bounded in time (about 40 s plus the drain periods).
'use strict';
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const CLIENTS_DIR = path.join(__dirname, '..', 'tests', 'clients');
const support = require(path.join(CLIENTS_DIR, 'support'));
global.WebSocket = require(require.resolve('ws', { paths: [CLIENTS_DIR] }));
global.XMLHttpRequest = require(require.resolve('xhr2', { paths: [CLIENTS_DIR] }));
const { DirectLine, ConnectionStatus } = require(require.resolve('botframework-directlinejs', { paths: [CLIENTS_DIR] }));

const DRAIN_PERIOD = process.argv[2] || '20s';
const DRAIN_SPREAD = process.argv[3] || '5s';
const CLIENTS = Number(process.argv[4] || 10);
const POST_EVERY_MS = Number(process.argv[5] || 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Round robin over the backends in the pool; a backend taken out gets no new connection. */
function loadBalancer() {
  const pool = [];
  let next = 0;
  const server = net.createServer((client) => {
    if (pool.length === 0) return client.destroy();
    const backend = pool[next++ % pool.length];
    const upstream = net.connect(backend.port, '127.0.0.1');
    client.pipe(upstream).pipe(client);
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    address: `http://127.0.0.1:${server.address().port}`,
    add: (gateway) => pool.push({ port: Number(new URL(gateway.address).port), gateway }),
    remove: (gateway) => pool.splice(pool.findIndex((b) => b.gateway === gateway), 1),
    close: () => server.close(),
  })));
}

async function replica(emulator, config) {
  return support.start(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--upstream', emulator.address],
  { DIRECTLINE_SECRET: support.SECRET, DIRECTLINE_GATEWAY_TOKEN_KEY: support.TOKEN_KEY, RUST_LOG: 'warn' });
}

/** Takes `old` out of the pool, sends it SIGTERM and waits for its exit. */
async function retire(lb, old) {
  lb.remove(old);
  const exited = new Promise((resolve) => old.on('exit', resolve));
  const started = Date.now();
  old.kill('SIGTERM');
  await exited;
  return (Date.now() - started) / 1000;
}

function quantile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN;
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlgw-rolling-'));
  const config = path.join(dir, 'gateway.toml');
  // Every client comes from 127.0.0.1: the per-IP session limit would refuse most of them.
  fs.writeFileSync(config, `[rate_limits]\nsessions_per_minute = 0\n\n`
    + `[stream]\ndrain_period = "${DRAIN_PERIOD}"\ndrain_spread = "${DRAIN_SPREAD}"\n`);
  const emulator = await support.start(['emulator', '--listen', '127.0.0.1:0', '--secret', support.SECRET], {});
  const lb = await loadBalancer();
  const processes = [emulator];
  const a = await replica(emulator, config);
  const b = await replica(emulator, config);
  processes.push(a, b);
  lb.add(a);
  lb.add(b);
  const domain = `${lb.address}/v3/directline`;

  const clients = [];
  for (let i = 0; i < CLIENTS; i += 1) {
    const { token } = await (await fetch(`${domain}/tokens/generate`, { method: 'POST' })).json();
    const directLine = new DirectLine({ token, domain, webSocket: true });
    const c = { directLine, sent: new Map(), delays: [], failed: 0 };
    directLine.activity$.subscribe((activity) => {
      const match = /^echo: (m-\d+)$/.exec(activity.text || '');
      if (match && c.sent.has(match[1])) {
        c.delays.push({ at: Date.now(), ms: Date.now() - c.sent.get(match[1]) });
        c.sent.delete(match[1]);
      }
    });
    directLine.connectionStatus$.subscribe((status) => {
      if (status === ConnectionStatus.Online) c.online = true;
    });
    clients.push(c);
  }
  await support.until('every client online', () => clients.every((c) => c.online), 30000);

  let n = 0;
  let posting = true;
  const posters = clients.map(async (c, index) => {
    await sleep((index * POST_EVERY_MS) / CLIENTS);
    while (posting) {
      const id = `m-${(n += 1)}`;
      c.sent.set(id, Date.now());
      c.directLine.postActivity({ type: 'message', from: { id: 'user' }, text: id })
        .subscribe(() => {}, () => { c.failed += 1; });
      await sleep(POST_EVERY_MS);
    }
  });

  await sleep(5000);
  const rollStarted = Date.now();
  const c1 = await replica(emulator, config);
  processes.push(c1);
  lb.add(c1);
  const firstStop = retire(lb, a);
  const d1 = await replica(emulator, config);
  processes.push(d1);
  lb.add(d1);
  const secondStop = retire(lb, b);
  const [firstSeconds, secondSeconds] = await Promise.all([firstStop, secondStop]);
  const rollSeconds = (Date.now() - rollStarted) / 1000;
  // Past DLJS's longest reconnect wait (15 s) after the last close.
  await sleep(20000);
  posting = false;
  await Promise.all(posters);
  await sleep(2000);

  const all = clients.flatMap((c) => c.delays.map((d) => d.ms)).sort((x, y) => x - y);
  const worst = clients.map((c) => Math.max(0, ...c.delays.map((d) => d.ms))).sort((x, y) => x - y);
  const lost = clients.reduce((sum, c) => sum + c.sent.size, 0);
  const over1s = all.filter((ms) => ms > 1000).length;
  console.log(JSON.stringify({
    drain_period: DRAIN_PERIOD,
    drain_spread: DRAIN_SPREAD,
    clients: CLIENTS,
    echoes: all.length,
    unanswered: lost,
    failed_posts: clients.reduce((sum, c) => sum + c.failed, 0),
    echo_ms: { p50: quantile(all, 0.5), p99: quantile(all, 0.99), max: all[all.length - 1] },
    echoes_over_1s: over1s,
    worst_gap_per_client_ms: worst,
    sigterm_to_exit_s: [firstSeconds, secondSeconds],
    roll_s: rollSeconds,
  }, null, 1));
  for (const c of clients) c.directLine.end();
  lb.close();
  for (const p of processes) p.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}

main().catch((error) => { console.error(error); process.exit(1); });
