// js-libp2p 3.3 calls Promise.withResolvers (ES2024; Node >= 22) in its upgrader, yamux muxer,
// tcp transport, multistream-select, identify and peer store; its p-retry dependency declares
// node >= 22. Node 20 lacks only that one function (checked by grepping node_modules for the
// ES2024/2025 built-ins), so this spec-conformant polyfill lets the pinned packages run on
// Node 20 unchanged. Imported first by responder.mjs; a no-op on Node >= 22.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve, reject
      const promise = new this((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}
