// Conversations kept in this browser's IndexedDB, so they survive a reload and a restart of stove (the
// browser keys them by stove's address: the same host and port finds them again). Where a browser allows no
// storage, they live in memory for this visit and the page says so.

const DATABASE = "stove";
const STORE = "conversations";

let database = null;
let memory = null;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Opens the database; resolves to false (and keeps conversations in memory) when the browser refuses. */
export async function open() {
  try {
    const req = indexedDB.open(DATABASE, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "id" });
    database = await request(req);
    return true;
  } catch {
    memory = new Map();
    return false;
  }
}

function store(mode) {
  return database.transaction(STORE, mode).objectStore(STORE);
}

/** Every conversation, the most recently changed first. */
export async function all() {
  const list = memory ? [...memory.values()] : await request(store("readonly").getAll());
  return list.sort((a, b) => b.updated - a.updated);
}

export async function save(conversation) {
  if (memory) memory.set(conversation.id, structuredClone(conversation));
  else await request(store("readwrite").put(conversation));
}

export async function remove(id) {
  if (memory) memory.delete(id);
  else await request(store("readwrite").delete(id));
}
