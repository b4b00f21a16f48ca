// A subscriber of one channel with the real centrifuge client (and ws as its WebSocket), for
// tests/e2e/test_notify.py: connect with a JWT, subscribe, print every publication.
// Usage: node subscribe.js <ws url> <jwt> <channel> <stay ms>. Prints one JSON object per line
// ({"event":"subscribed"}, {"event":"publication","data":...}, ...); exits after stay ms.
'use strict';
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const [url, token, channel, stayMs] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const centrifuge = new Centrifuge(url, { token, websocket: WebSocket });
const sub = centrifuge.newSubscription(channel);
sub.on('subscribed', (ctx) => out({ event: 'subscribed', channel: ctx.channel }));
sub.on('publication', (ctx) => out({ event: 'publication', channel: ctx.channel, data: ctx.data }));
sub.on('error', (ctx) => out({ event: 'subscription_error', error: String(ctx.error && ctx.error.message) }));
sub.on('unsubscribed', (ctx) => out({ event: 'unsubscribed', code: ctx.code, reason: ctx.reason }));
centrifuge.on('connected', () => out({ event: 'connected' }));
centrifuge.on('error', (ctx) => out({ event: 'error', error: String(ctx.error && ctx.error.message) }));
sub.subscribe();
centrifuge.connect();
setTimeout(() => {
  out({ event: 'done' });
  centrifuge.disconnect();
  process.exit(0);
}, Number(stayMs));
