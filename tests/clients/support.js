// Real processes on loopback for the client tests: the emulator and the gateway binaries.
'use strict';
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');

const BIN = process.env.GATEWAY_BIN || path.join(__dirname, '..', '..', 'target', 'debug', 'directline-gateway');
const SECRET = 'client-test-secret-0123456789abcdef';
const TOKEN_KEY = 'client-test-token-key-0123456789abcdef';
const WAIT_MS = 30000;

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

function startGateway(upstream, listen, extraArgs = []) {
  return start(
    ['--listen', listen, '--admin-listen', '127.0.0.1:0', '--upstream', upstream, ...extraArgs],
    { DIRECTLINE_SECRET: SECRET, DIRECTLINE_GATEWAY_TOKEN_KEY: TOKEN_KEY, RUST_LOG: 'warn' },
  );
}

/** An emulator process with the given fault flags, and a gateway in front of it. */
async function gatewayWithEmulator(faults, listen = '127.0.0.1:0') {
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, ...faults], {});
  const env = { emulator, gateway: await startGateway(emulator.address, listen) };
  env.domain = `${env.gateway.address}/v3/directline`;
  env.metrics = async () => {
    const line = env.gateway.lines.find((l) => l.includes('/metrics'));
    return (await fetch(line.match(/http:\/\/\S+\/metrics/)[0])).text();
  };
  env.stop = () => { env.gateway.kill('SIGTERM'); emulator.kill('SIGTERM'); };
  return env;
}

/**
 * A Copilot Studio agent as the emulator serves it (token endpoint and regional settings on
 * its own origin), and a gateway given only `--token-endpoint`: no secret, no `--upstream`,
 * so tokens come from the endpoint and the Direct Line host is discovered. The endpoint is
 * addressed as `localhost` so the emulator's record tells it from Direct Line (`127.0.0.1`).
 */
async function gatewayWithCopilotAgent(faults, listen = '127.0.0.1:0') {
  const emulator = await start(['emulator', '--listen', '127.0.0.1:0', '--secret', SECRET, ...faults], {});
  const endpoint = `${emulator.address.replace('127.0.0.1', 'localhost')}`
    + '/powervirtualagents/botsbyschema/cr_demo/directline/token?api-version=2022-03-01-preview';
  const gateway = await start(
    ['--listen', listen, '--admin-listen', '127.0.0.1:0', '--token-endpoint', endpoint],
    { DIRECTLINE_SECRET: '', DIRECTLINE_GATEWAY_TOKEN_KEY: TOKEN_KEY, RUST_LOG: 'warn' },
  );
  const env = { emulator, gateway, domain: `${gateway.address}/v3/directline` };
  env.metrics = async () => {
    const line = env.gateway.lines.find((l) => l.includes('/metrics'));
    return (await fetch(line.match(/http:\/\/\S+\/metrics/)[0])).text();
  };
  env.stop = () => { env.gateway.kill('SIGTERM'); emulator.kill('SIGTERM'); };
  return env;
}

/** The value of one series in a Prometheus text exposition (0 when absent). */
function metric(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** A port nothing listens on right now, for a gateway that must come back on the same one. */
function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function until(what, check, waitMs = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = async () => {
      try {
        if (await check()) return resolve();
      } catch (error) {
        return reject(error);
      }
      if (Date.now() - started > waitMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

module.exports = { BIN, SECRET, TOKEN_KEY, WAIT_MS, start, startGateway, gatewayWithEmulator, gatewayWithCopilotAgent, metric, freePort, until };
