// The order-fulfilment reactor in JavaScript: a small process manager.
//
// Orders live in streams `order-{id}`. Once an order is both placed
// (`OrderPlaced`) and paid (`PaymentReceived`), in either order, it appends
// one `ShipmentRequested` to `shipment-{id}`:
// `{"orderId":"...","customerId":"..." or null}`, expecting a new stream.
//
// State: `order/{id}` → `{"placed":..,"paid":..,"customerId":..,"requested":..}`,
// which `query` answers for an order id. The same reactor as the Rust
// `plugins/order-fulfilment` and the Python one, byte for byte.

import * as state from 'eventfold:plugin/state@0.4.0';
import { append } from 'eventfold:plugin/append@0.4.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// An order's state, its keys always in this order.
function encodeOrder({ placed, paid, customerId, requested }) {
  return encoder.encode(JSON.stringify({ placed, paid, customerId, requested }));
}

export function describe() {
  return {
    kind: 'reactor',
    subscription: { categories: ['order'], eventTypes: ['OrderPlaced', 'PaymentReceived'] },
    version: '0.1.0',
    // The whole batch as one JSON array: one JSON.parse per batch.
    encoding: 'json',
  };
}

export function handle(events) {
  if (events.tag !== 'json') throw { index: 0, message: 'expected a JSON batch' };
  // Orders are cached for the batch (reads see the batch's own changes) and
  // encoded and handed to the host once per key at the end.
  const orders = new Map();
  const batch = JSON.parse(decoder.decode(events.val));
  // Each event: [position, stream, version, type, id, data, metadata, recordedAt].
  batch.forEach(([position, stream, , type, , data], index) => {
    try {
      if (typeof data !== 'object' || data === null || Array.isArray(data)) {
        throw new Error('data must be a JSON object');
      }
      const orderId = stream.startsWith('order-') ? stream.slice('order-'.length) : stream;
      const key = `order/${orderId}`;
      let order = orders.get(key);
      if (order === undefined) {
        const stored = state.get(key);
        order = stored !== undefined
          ? JSON.parse(decoder.decode(stored))
          : { placed: false, paid: false, customerId: null, requested: false };
        orders.set(key, order);
      }
      switch (type) {
        case 'OrderPlaced':
          order.placed = true;
          order.customerId = typeof data.customerId === 'string' ? data.customerId : null;
          break;
        case 'PaymentReceived':
          order.paid = true;
          break;
        default:
          throw new Error(`unknown event type ${JSON.stringify(type)}`);
      }
      // Placed and paid: request the shipment, once.
      if (order.placed && order.paid && !order.requested) {
        const shipment = { orderId, customerId: order.customerId };
        append(
          BigInt(position), // a u64: a BigInt
          `shipment-${orderId}`,
          'ShipmentRequested',
          encoder.encode(JSON.stringify(shipment)),
          encoder.encode('{}'),
          { tag: 'no-stream' },
        );
        order.requested = true;
      }
    } catch (error) {
      // An `err` of `result<_, handle-error>`: which event failed, and why.
      throw { index, message: String(error.message ?? error) };
    }
  });
  for (const [key, order] of orders) state.set(key, encodeOrder(order));
}

// The request is an order id; the answer its state, or `null`.
export function query(request) {
  let orderId;
  try {
    orderId = new TextDecoder('utf-8', { fatal: true }).decode(request);
  } catch {
    throw 'the request must be an order id, in UTF-8';
  }
  return state.get(`order/${orderId}`) ?? encoder.encode('null');
}
