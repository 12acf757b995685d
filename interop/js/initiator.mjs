// A bare js-libp2p initiator for /taleus/bootstrap/2.0.0: runs N bootstraps against a link of
// our Python node (the js -> py direction of the interop check of issue 17).
//
//   node initiator.mjs LINK [--sessions N]
//
// Per session: dial, send `contact` (the link's token, this node's peer id, an empty identity);
// inviter stock: read `accepted` with its provision, check it names both parties, send `ack`;
// inviter foil: read `accepted` (no provision), send `provisioned` (a draft tally in a memory
// database, as the Python invitee's memory hooks make it), read `ack`. Then close. Prints one
// JSON line {"completed": n, "failed": m, "errors": [...]}; exit status 1 if any failed.

import './node20-shim.mjs'
import { noise } from '@chainsafe/libp2p-noise'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { PROTOCOL_ID, FrameReader, encodeFrame, urlsafeToken, utcNow } from './responder.mjs'

const LINK_PREFIX = 'taleus:bootstrap:'

function decodeLink (text) {
  if (!text.startsWith(LINK_PREFIX)) throw new Error('not a taleus bootstrap link')
  return JSON.parse(Buffer.from(text.slice(LINK_PREFIX.length), 'base64url').toString('utf-8'))
}

async function bootstrap (node, link) {
  const self = node.peerId.toString()
  const addr = multiaddr(link.responder_addrs[0])
  const inviter = addr.getComponents().find(c => c.name === 'p2p').value
  const stream = await node.dialProtocol(addr, PROTOCOL_ID)
  const reader = new FrameReader(stream)
  try {
    stream.send(encodeFrame({ type: 'contact', token: link.token, party_id: self, identity: {}, cadre_addrs: [] }))
    const accepted = await reader.receive()
    if (accepted.type !== 'accepted') throw new Error(`expected accepted, got ${JSON.stringify(accepted)}`)
    if (accepted.inviter_role !== link.inviter_role || accepted.party_id !== inviter) throw new Error('accepted names the wrong party')
    if (link.inviter_role === 'stock') {
      const tally = accepted.provision?.tally
      if (tally?.stock_party_id !== inviter || tally?.foil_party_id !== self) throw new Error('provision names the wrong parties')
      stream.send(encodeFrame({ type: 'ack', session_id: accepted.session_id }))
    } else {
      if (accepted.provision !== null) throw new Error('a foil inviter sent a provision')
      const tallyId = 'tly_' + urlsafeToken(16)
      stream.send(encodeFrame({
        type: 'provisioned',
        session_id: accepted.session_id,
        provision: {
          tally: { tally_id: tallyId, provisioner_role: 'stock', stock_party_id: self, foil_party_id: inviter, created_at: utcNow() },
          database: { endpoint: 'memory:' + tallyId, credentials_ref: 'none' }
        }
      }))
      const ack = await reader.receive()
      if (ack.type !== 'ack' || ack.session_id !== accepted.session_id) throw new Error(`expected ack, got ${JSON.stringify(ack)}`)
    }
    await stream.close()
  } catch (err) {
    stream.abort(err)
    throw err
  }
}

async function main () {
  const [text, ...rest] = process.argv.slice(2)
  const sessions = rest[0] === '--sessions' ? Number(rest[1]) : 1
  const link = decodeLink(text)
  const node = await createLibp2p({
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() }
  })
  await node.start()
  const result = { completed: 0, failed: 0, errors: [] }
  for (let i = 0; i < sessions; i++) {
    try {
      await bootstrap(node, link)
      result.completed += 1
    } catch (err) {
      result.failed += 1
      if (result.errors.length < 5) result.errors.push(String(err?.message ?? err))
    }
  }
  await node.stop()
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(result.failed ? 1 : 0))
}

main().catch(err => {
  process.stderr.write(`initiator: ${err.stack ?? err}\n`)
  process.exit(1)
})
