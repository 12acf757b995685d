// A bare js-libp2p responder for /taleus/bootstrap/2.0.0: the js-libp2p row of issue 17.
//
// It does exactly what the Python bare handler (BareHandler in
// taleus_bootstrap/loadtest/server.py, `loadtest --baseline`) does: read the `contact` frame;
// stock: answer `accepted` with a provision, read the `ack`; foil: answer `accepted` without
// one, read `provisioned`, send `ack`; then close. No token check,
// no hooks, no audit. Framing as in taleus_bootstrap/_codec.py: an unsigned LEB128 varint
// (minimal, at most 4 bytes) giving the body length, then compact UTF-8 JSON; prefix and body
// go out in one write, as the Python FrameChannel sends them.
//
//   node responder.mjs [--listen /ip4/127.0.0.1/tcp/0] [--role stock|foil] [--count-frames]
//
// --count-frames: count the yamux frames the node sends and receives, by type and flags
// (wrapping each muxer's sendFrame and handleFrame), and add them to the statistics line as
// "yamux_frames": {"out": {...}, "in": {...}} (keys like "data+SYN", "window_update+ACK").
//
// Prints one JSON line {"peer_id", "addrs", "link"} (the link built as
// taleus_bootstrap/_link.py encodes it, token "baseline"), serves until its standard input
// closes or it gets SIGTERM/SIGINT, then prints one JSON line of statistics in the shape the
// Python load server prints ({"by_state": {"COMPLETED": n, "FAILED": m}}).

import './node20-shim.mjs' // first: Promise.withResolvers on Node 20
import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { createLibp2p } from 'libp2p'

export const PROTOCOL_ID = '/taleus/bootstrap/2.0.0'
const MAX_FRAME_BYTES = 16 * 1024 // DEFAULT_MAX_FRAME_BYTES
const MAX_VARINT_BYTES = 4
const LINK_PREFIX = 'taleus:bootstrap:'

function parseArgs (argv) {
  const args = { listen: '/ip4/127.0.0.1/tcp/0', role: 'stock', countFrames: false }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--listen') args.listen = argv[++i]
    else if (argv[i] === '--count-frames') args.countFrames = true
    else if (argv[i] === '--role') args.role = argv[++i]
    else throw new Error(`unknown argument ${argv[i]}`)
  }
  if (args.role !== 'stock' && args.role !== 'foil') throw new Error('--role is stock or foil')
  return args
}

export function encodeVarint (value) {
  const out = []
  do {
    let byte = value & 0x7f
    value = Math.floor(value / 128)
    if (value > 0) byte |= 0x80
    out.push(byte)
  } while (value > 0)
  return Uint8Array.from(out)
}

export function encodeFrame (frame) {
  const body = new TextEncoder().encode(JSON.stringify(frame))
  if (body.length > MAX_FRAME_BYTES) throw new Error(`outgoing frame is ${body.length} bytes`)
  const prefix = encodeVarint(body.length)
  const wire = new Uint8Array(prefix.length + body.length)
  wire.set(prefix, 0)
  wire.set(body, prefix.length)
  return wire
}

// Reads whole frames off a js-libp2p v3 stream (an async iterable of Uint8Array or
// Uint8ArrayList chunks), keeping what is read past a frame for the next one.
export class FrameReader {
  constructor (stream) {
    this.iterator = stream[Symbol.asyncIterator]()
    this.buffer = new Uint8Array(0)
  }

  async fill () {
    const { value, done } = await this.iterator.next()
    if (done) throw new Error('stream ended before a whole frame')
    const chunk = value instanceof Uint8Array ? value : value.subarray()
    const joined = new Uint8Array(this.buffer.length + chunk.length)
    joined.set(this.buffer, 0)
    joined.set(chunk, this.buffer.length)
    this.buffer = joined
  }

  async receive () {
    for (;;) {
      const header = this.header()
      if (header !== null) {
        const [length, used] = header
        if (length > MAX_FRAME_BYTES) throw new Error('frame_too_large')
        while (this.buffer.length < used + length) await this.fill()
        const body = this.buffer.subarray(used, used + length)
        this.buffer = this.buffer.subarray(used + length)
        const frame = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body))
        if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) throw new Error('malformed')
        return frame
      }
      await this.fill()
    }
  }

  // [value, bytes used] of the varint at the head of the buffer, or null if incomplete.
  header () {
    let value = 0
    for (let i = 0; i < Math.min(this.buffer.length, MAX_VARINT_BYTES); i++) {
      const byte = this.buffer[i]
      value += (byte & 0x7f) * 2 ** (7 * i)
      if ((byte & 0x80) === 0) {
        if (i > 0 && byte === 0) throw new Error('malformed: non-minimal varint')
        return [value, i + 1]
      }
    }
    if (this.buffer.length >= MAX_VARINT_BYTES) throw new Error('malformed: length prefix too long')
    return null
  }
}

export function urlsafeToken (bytes) {
  return randomBytes(bytes).toString('base64url') // = secrets.token_urlsafe(bytes)
}

// format_utc: RFC 3339 with Z; Python's utc_now() carries microseconds.
export function utcNow () {
  return new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
}

export function mintLink (addrs, role, token = 'baseline') {
  const expires = new Date(Date.now() + 86_400_000).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
  const payload = JSON.stringify({
    responder_addrs: addrs,
    token,
    expires_at: expires,
    inviter_role: role,
    identity_requirements: null
  })
  return LINK_PREFIX + Buffer.from(payload, 'utf-8').toString('base64url')
}

const FRAME_TYPES = ['data', 'window_update', 'ping', 'go_away']
const FLAGS = [[1, 'SYN'], [2, 'ACK'], [4, 'FIN'], [8, 'RST']]

function frameKey (header) {
  const flags = FLAGS.filter(([bit]) => (header.flag & bit) !== 0).map(([, name]) => name)
  return [FRAME_TYPES[header.type] ?? `type${header.type}`, ...flags].join('+')
}

// yamux() with every muxer's frames counted into frames.out / frames.in.
function countingYamux (frames) {
  const factory = yamux()
  return (components) => {
    const muxerFactory = factory(components)
    const create = muxerFactory.createStreamMuxer.bind(muxerFactory)
    muxerFactory.createStreamMuxer = (...args) => {
      const muxer = create(...args)
      const send = muxer.sendFrame.bind(muxer)
      const handle = muxer.handleFrame.bind(muxer)
      muxer.sendFrame = (header, data) => {
        const key = frameKey(header)
        frames.out[key] = (frames.out[key] ?? 0) + 1
        return send(header, data)
      }
      muxer.handleFrame = (frame) => {
        const key = frameKey(frame.header)
        frames.in[key] = (frames.in[key] ?? 0) + 1
        return handle(frame)
      }
      return muxer
    }
    return muxerFactory
  }
}

class BareHandler {
  constructor (localPeerId, role) {
    this.localPeerId = localPeerId
    this.role = role
    this.completed = 0
    this.failed = 0
  }

  // _provision(stock_provision_request(...)) of server.py: a draft tally in a memory database.
  provision (foilPartyId) {
    const tallyId = 'tly_' + urlsafeToken(16)
    return {
      tally: {
        tally_id: tallyId,
        provisioner_role: 'stock',
        stock_party_id: this.localPeerId,
        foil_party_id: foilPartyId,
        created_at: utcNow()
      },
      database: { endpoint: 'memory:' + tallyId, credentials_ref: 'none' }
    }
  }

  async handle (stream, connection) {
    const reader = new FrameReader(stream)
    try {
      const contact = await reader.receive()
      if (contact.type !== 'contact') throw new Error(`expected contact, got ${contact.type}`)
      const sessionId = urlsafeToken(16)
      const accepted = {
        type: 'accepted',
        session_id: sessionId,
        inviter_role: this.role,
        party_id: this.localPeerId,
        cadre_addrs: [],
        provision: this.role === 'stock' ? this.provision(connection.remotePeer.toString()) : null
      }
      if (!stream.send(encodeFrame(accepted))) await stream.onDrain()
      if (this.role === 'stock') {
        const ack = await reader.receive()
        if (ack.type !== 'ack') throw new Error(`expected ack, got ${ack.type}`)
      } else {
        const provisioned = await reader.receive()
        if (provisioned.type !== 'provisioned') throw new Error(`expected provisioned, got ${provisioned.type}`)
        if (!stream.send(encodeFrame({ type: 'ack', session_id: sessionId }))) await stream.onDrain()
      }
      await stream.close()
      this.completed += 1
    } catch (err) {
      this.failed += 1
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const frames = { out: {}, in: {} }
  const node = await createLibp2p({
    addresses: { listen: [args.listen] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [args.countFrames ? countingYamux(frames) : yamux()],
    services: { identify: identify() },
    connectionManager: {
      maxConnections: 8192,
      inboundConnectionThreshold: 1_000_000,
      maxIncomingPendingConnections: 1024
    }
  })
  const peerId = node.peerId.toString()
  const handler = new BareHandler(peerId, args.role)
  await node.handle(PROTOCOL_ID, (stream, connection) => handler.handle(stream, connection), {
    maxInboundStreams: 100_000,
    maxOutboundStreams: 100_000
  })
  await node.start()
  const addrs = node.getMultiaddrs().map(a => a.toString())
  process.stdout.write(JSON.stringify({ peer_id: peerId, addrs, link: mintLink(addrs, args.role) }) + '\n')

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    await node.stop()
    const stats = { by_state: { COMPLETED: handler.completed, FAILED: handler.failed } }
    if (args.countFrames) stats.yamux_frames = frames
    process.stdout.write(JSON.stringify(stats) + '\n', () => process.exit(0))
  }
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch(err => {
    process.stderr.write(`responder: ${err.stack ?? err}\n`)
    process.exit(1)
  })
}
