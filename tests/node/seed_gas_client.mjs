// The gas-sensor seed's browser client (scenario 003, "Frontend Implementation"), run by Node
// with the real socket.io-client, so the tests can drive it against a hub they started.
//
//   node tests/node/seed_gas_client.mjs URL DEVICE_ID      (token in FIELDLINK_TOKEN, optional)
//
// The client code is the seed's: io(url, {transports: ['websocket', 'polling'], reconnection,
// reconnectionDelay: 1000, reconnectionAttempts: 5, auth: {token}}), and on 'connect' it emits
// 'subscribe:device' with the device id; it listens to 'device:data', 'device:alerts',
// 'connect_error' and 'disconnect'. Where the UI would update, this prints one JSON line per event
// on stdout: {"event", "t" (receive time: Date.now(), ms since the epoch), ...}. Events the seed does
// not listen to (e.g. 'connected', 'fieldlink:error') and the manager's reconnection events are
// printed as well, so a test sees everything the client got.
//
// stdin takes one JSON command per line:
//   {"cmd": "emit", "name": "...", "args": [...], "ack": true}  emit (with an ack callback: the
//                                                               answer is printed as "ack")
//   {"cmd": "close"}  the seed's onUnmounted: unsubscribe:device, disconnect, print "closed", exit.
// End of stdin closes the same way.

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [url, deviceId] = process.argv.slice(2);
if (!url || !deviceId) {
  process.stderr.write('usage: seed_gas_client.mjs URL DEVICE_ID\n');
  process.exit(2);
}
const token = process.env.FIELDLINK_TOKEN || undefined;

function out(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, t: Date.now(), ...fields })}\n`);
}

const socket = io(url, {
  transports: ['websocket', 'polling'],
  reconnection: true,
  reconnectionDelay: 1000,
  reconnectionAttempts: 5,
  auth: { token },
});

const transport = () => socket.io.engine?.transport?.name ?? null;

socket.on('connect', () => {
  out('connect', { id: socket.id, transport: transport(), recovered: socket.recovered });
  socket.emit('subscribe:device', deviceId);
});

socket.on('device:data', ({ deviceId: id, data, timestamp }) => {
  out('device:data', { deviceId: id, data, timestamp });
});

socket.on('device:alerts', ({ deviceId: id, alerts }) => {
  out('device:alerts', { deviceId: id, alerts });
});

socket.on('connect_error', (err) => {
  out('connect_error', { message: err.message, data: err.data ?? null, active: socket.active });
});

socket.on('disconnect', (reason) => {
  out('disconnect', { reason, active: socket.active });
});

const seen = new Set(['connect', 'device:data', 'device:alerts', 'connect_error', 'disconnect']);
socket.onAny((name, ...args) => {
  if (!seen.has(name)) out(name, { args });
});

for (const name of ['reconnect_attempt', 'reconnect', 'reconnect_error', 'reconnect_failed']) {
  socket.io.on(name, (arg) => {
    out(`manager:${name}`, { arg: arg instanceof Error ? arg.message : arg ?? null });
  });
}

let closing = false;
let commands;
function close() {
  if (closing) return;
  closing = true;
  if (socket.connected) socket.emit('unsubscribe:device', deviceId);
  socket.disconnect();
  out('closed');
  commands.close();
  process.stdin.destroy();
  // Nothing is left to keep Node running once the packets are out. If something still does,
  // exit with 3: the tests expect 0.
  setTimeout(() => {
    process.stderr.write('still running 2 s after close\n');
    process.exit(3);
  }, 2000).unref();
}

commands = createInterface({ input: process.stdin });
commands.on('line', (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    out('bad_command', { line, error: err.message });
    return;
  }
  if (command.cmd === 'close') {
    close();
  } else if (command.cmd === 'emit') {
    const args = command.args ?? [];
    if (command.ack) {
      socket.emit(command.name, ...args, (...answer) => out('ack', { name: command.name, args: answer }));
    } else {
      socket.emit(command.name, ...args);
    }
  } else {
    out('bad_command', { line, error: 'unknown cmd' });
  }
});
commands.on('close', close);
