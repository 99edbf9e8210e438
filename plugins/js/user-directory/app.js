// The classic example in JavaScript: a directory of users.
//
// State: `user/{id}` → `{"name": ...}`; a deleted user is removed. The same
// projection as the Rust `plugins/user-directory`, byte for byte.

import * as state from 'eventfold:plugin/state@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function describe() {
  return {
    kind: 'projection',
    subscription: { categories: ['user'], eventTypes: [] },
    version: '0.1.0',
    // The whole batch as one JSON array: one JSON.parse per batch.
    encoding: 'json',
  };
}

export function handle(events) {
  if (events.tag !== 'json') throw { index: 0, message: 'expected a JSON batch' };
  // Writes are cached for the batch (the latest name per user) and encoded
  // and handed to the host once per key: host calls and encoding, not the
  // fold, are what a plugin pays for per event.
  const writes = new Map();
  const batch = JSON.parse(decoder.decode(events.val));
  // Each event: [position, stream, version, type, id, data, metadata, recordedAt].
  batch.forEach(([, , , type, , data], index) => {
    try {
      if (!Number.isInteger(data.userId) || data.userId < 0) {
        throw new Error('userId must be a non-negative integer');
      }
      const key = `user/${data.userId}`;
      switch (type) {
        case 'UserCreated':
        case 'UserNameUpdated':
          if (typeof data.name !== 'string') throw new Error('name must be a string');
          writes.set(key, data.name);
          break;
        case 'UserDeleted':
          writes.set(key, null);
          break;
        default:
          throw new Error(`unknown event type ${JSON.stringify(type)}`);
      }
    } catch (error) {
      // An `err` of `result<_, handle-error>`: which event failed, and why.
      throw { index, message: String(error.message ?? error) };
    }
  });
  for (const [key, value] of writes) {
    if (value === null) state.delete(key);
    else state.set(key, encoder.encode(JSON.stringify({ name: value })));
  }
}

export function query(_request) {
  throw 'this plugin answers no queries';
}
