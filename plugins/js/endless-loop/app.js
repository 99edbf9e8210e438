// Test plugin: never returns from handle. The host's deadline must stop it.

export function describe() {
  return { kind: 'projection', subscription: { categories: [], eventTypes: [] }, version: '0.1.0' };
}

export function handle(_events) {
  for (;;) {}
}

export function query(_request) {
  throw 'no queries';
}
