// polarizer-bridge: forwards a web app's state changes to the Polarizer agent on its host, as custom
// events of the test that is running (the agent's `--emit-websocket 127.0.0.1:7703`). An ES module with
// no dependencies: import it from the app under test, or load it beside it.
//
//   import { connect, forwardStore, forwardObservable, middleware } from "./polarizer-bridge.js";
//   const bridge = connect();                                   // ws://127.0.0.1:7703, kind "app"
//   forwardStore(store, bridge, (state) => state.registration); // a redux store: each change of a slice
//   forwardObservable(action$, bridge);                         // redux-observable, RxJS: each value
//   createStore(reducer, applyMiddleware(middleware(bridge)));  // or each action, as it is dispatched
//
// Events wait in a bounded queue while the agent is not reachable (the oldest are dropped beyond it,
// and counted); the bridge reconnects with backoff. `bridge.sent` counts the events the agent took.

const MAX_QUEUED = 1000;

/** Opens the bridge to the agent. Options: `url` (ws://127.0.0.1:7703), `kind` ("app"). */
export function connect({ url = "ws://127.0.0.1:7703", kind = "app" } = {}) {
  let socket = null;
  let wait = 250;
  let closed = false;
  const queue = [];
  const bridge = {
    /** Events the agent answered `ok` to. */
    sent: 0,
    /** Events the agent refused (its reasons are in `errors`, the newest last). */
    refused: 0,
    errors: [],
    /** Events dropped from a full queue while the agent was away. */
    dropped: 0,
    /** Sends `data` (any JSON value) as one event; `summary` is the line `polarizer tail` shows. */
    send(data, summary) {
      const event = { kind, data };
      if (summary !== undefined) event.summary = String(summary);
      queue.push(JSON.stringify(event));
      while (queue.length > MAX_QUEUED) {
        queue.shift();
        bridge.dropped += 1;
      }
      flush();
    },
    close() {
      closed = true;
      if (socket) socket.close(1000, "done");
    },
  };
  // Each message is answered in order: `ok`, or `error: why`.
  let inFlight = 0;
  function flush() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    while (queue.length > 0) {
      socket.send(queue.shift());
      inFlight += 1;
    }
  }
  function open() {
    socket = new WebSocket(url);
    socket.onopen = () => {
      wait = 250;
      flush();
    };
    socket.onmessage = (message) => {
      inFlight = Math.max(0, inFlight - 1);
      if (message.data === "ok") {
        bridge.sent += 1;
      } else {
        bridge.refused += 1;
        bridge.errors.push(String(message.data));
        if (bridge.errors.length > 20) bridge.errors.shift();
      }
    };
    socket.onclose = () => {
      // What was sent and not answered may not have reached the agent: it is counted as dropped.
      bridge.dropped += inFlight;
      inFlight = 0;
      if (closed) return;
      setTimeout(open, wait);
      wait = Math.min(wait * 2, 5000);
    };
  }
  open();
  return bridge;
}

/**
 * Sends `select(store.getState())` each time it changes (by identity, as redux selectors are compared),
 * starting with its value now. Returns the store's unsubscribe function.
 */
export function forwardStore(store, bridge, select = (state) => state, summary = () => "state changed") {
  let last = select(store.getState());
  bridge.send(last, summary(last));
  return store.subscribe(() => {
    const next = select(store.getState());
    if (next !== last) {
      last = next;
      bridge.send(next, summary(next));
    }
  });
}

/** Sends each value of an observable (RxJS, redux-observable's action$). Returns its subscription. */
export function forwardObservable(observable, bridge, summary = (value) => value && value.type) {
  return observable.subscribe({
    next: (value) => bridge.send(value, summary(value)),
  });
}

/** A redux middleware sending each dispatched action (`type` as the summary) before it is reduced. */
export function middleware(bridge) {
  return () => (next) => (action) => {
    bridge.send(action, action && action.type);
    return next(action);
  };
}
