// The console's page: plain DOM, no framework. Each panel calls one part of
// etcd's API through Concord (etcd.ts) and renders the answer; errors show
// etcd's own messages (the gateway answers with etcd's codes and texts).

import { Code, ConnectError } from "@connectrpc/connect";

import { Concord, EventType, needsLogin, text, type KeyValue, type Page } from "./etcd";
import "./style.css";

const api = new Concord(window.location.origin);

function el<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`console: #${id} missing from index.html`);
  return e as T;
}

/** td builds a table cell with text content (never HTML: keys are user data). */
function td(content: string, cls?: string): HTMLTableCellElement {
  const c = document.createElement("td");
  c.textContent = content;
  if (cls) c.className = cls;
  return c;
}

const errorBox = el<HTMLSpanElement>("error");

const header = document.querySelector("header") as HTMLElement;

function showError(err: unknown): void {
  errorBox.textContent = ConnectError.from(err).message;
  // etcd refused the call for want of a (valid) token: point at the login form.
  if (needsLogin(err)) header.classList.add("login-needed");
}

/** run runs an action from the UI, showing its error instead of throwing. */
async function run(action: () => Promise<void>): Promise<void> {
  errorBox.textContent = "";
  header.classList.remove("login-needed");
  try {
    await action();
  } catch (err) {
    showError(err);
  }
}

// ---- keys: a paginated prefix listing --------------------------------------

const listPrefix = el<HTMLInputElement>("list-prefix");
const listLimit = el<HTMLInputElement>("list-limit");
const listRows = el<HTMLTableSectionElement>("list-rows");
const listSummary = el<HTMLParagraphElement>("list-summary");
const listMore = el<HTMLButtonElement>("list-more");
let nextPage: (() => Promise<Page>) | undefined;
let shown = 0;

function renderPage(page: Page, append: boolean): void {
  if (!append) {
    listRows.replaceChildren();
    shown = 0;
  }
  for (const kv of page.kvs) listRows.append(keyRow(kv));
  shown += page.kvs.length;
  listSummary.textContent = `${shown} of ${page.count} keys at revision ${page.revision}`;
  nextPage = page.next;
  listMore.hidden = !nextPage;
}

function keyRow(kv: KeyValue): HTMLTableRowElement {
  const row = document.createElement("tr");
  const key = text(kv.key);
  row.dataset.key = key;
  row.append(
    td(key, "key"),
    td(text(kv.value), "value"),
    td(String(kv.createRevision)),
    td(String(kv.modRevision)),
    td(String(kv.version)),
    td(kv.lease === 0n ? "" : kv.lease.toString(16)),
  );
  const actions = document.createElement("td");
  const edit = document.createElement("button");
  edit.textContent = "Edit";
  edit.addEventListener("click", () => {
    editKey.value = key;
    editValue.value = text(kv.value);
    editResult.textContent = `${key} at mod revision ${kv.modRevision}`;
  });
  actions.append(edit);
  row.append(actions);
  return row;
}

async function list(): Promise<void> {
  const limit = Math.max(1, Math.min(1000, Number(listLimit.value) || 50));
  renderPage(await api.list(listPrefix.value, limit), false);
}

el<HTMLFormElement>("list-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void run(list);
});

listMore.addEventListener("click", () =>
  run(async () => {
    if (nextPage) renderPage(await nextPage(), true);
  }),
);

// ---- one key: get, put, delete ---------------------------------------------

const editKey = el<HTMLInputElement>("edit-key");
const editValue = el<HTMLTextAreaElement>("edit-value");
const editResult = el<HTMLParagraphElement>("edit-result");

el<HTMLFormElement>("edit-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void run(async () => {
    const rev = await api.put(editKey.value, editValue.value);
    editResult.textContent = `put ${editKey.value} at revision ${rev}`;
    await list();
  });
});

el<HTMLButtonElement>("get").addEventListener("click", () =>
  run(async () => {
    const kv = await api.get(editKey.value);
    if (!kv) {
      editValue.value = "";
      editResult.textContent = `${editKey.value} does not exist`;
      return;
    }
    editValue.value = text(kv.value);
    editResult.textContent = `${editKey.value} at mod revision ${kv.modRevision}, version ${kv.version}`;
  }),
);

el<HTMLButtonElement>("delete").addEventListener("click", () =>
  run(async () => {
    const deleted = await api.del(editKey.value);
    editResult.textContent = deleted > 0n ? `deleted ${editKey.value}` : `${editKey.value} does not exist`;
    await list();
  }),
);

// ---- watch: a live prefix watch over concord.v1.WatchService ---------------

const watchPrefix = el<HTMLInputElement>("watch-prefix");
const watchToggle = el<HTMLButtonElement>("watch-toggle");
const watchState = el<HTMLParagraphElement>("watch-state");
const watchEvents = el<HTMLOListElement>("watch-events");
/** maxEvents bounds the list so a busy prefix cannot grow the page forever. */
const maxEvents = 200;
let stopWatch: AbortController | undefined;

function setWatchState(state: "idle" | "starting" | "watching", message: string): void {
  watchState.dataset.state = state;
  watchState.textContent = message;
  watchToggle.textContent = state === "idle" ? "Start" : "Stop";
  watchPrefix.disabled = state !== "idle";
}

async function watch(prefix: string, abort: AbortController): Promise<void> {
  setWatchState("starting", `starting a watch on "${prefix}"`);
  try {
    for await (const resp of api.watch(prefix, abort.signal)) {
      if (resp.created) {
        setWatchState("watching", `watching "${prefix}" after revision ${resp.header?.revision ?? 0n}`);
      }
      for (const ev of resp.events) {
        const kv = ev.kv;
        if (!kv) continue;
        const item = document.createElement("li");
        const type = ev.type === EventType.DELETE ? "DELETE" : "PUT";
        item.className = type;
        item.dataset.key = text(kv.key);
        item.textContent =
          type === "PUT"
            ? `${type} ${text(kv.key)} = ${text(kv.value)} (revision ${kv.modRevision})`
            : `${type} ${text(kv.key)} (revision ${kv.modRevision})`;
        watchEvents.prepend(item);
      }
      while (watchEvents.children.length > maxEvents) watchEvents.lastElementChild?.remove();
      if (resp.canceled) {
        if (needsLogin(resp.cancelReason)) header.classList.add("login-needed");
        throw new Error(`watch canceled by the server: ${resp.cancelReason || "compacted at " + resp.compactRevision}`);
      }
    }
  } catch (err) {
    if (!(err instanceof ConnectError && err.code === Code.Canceled && abort.signal.aborted)) showError(err);
  } finally {
    if (stopWatch === abort) stopWatch = undefined;
    setWatchState("idle", "not watching");
  }
}

el<HTMLFormElement>("watch-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (stopWatch) {
    stopWatch.abort();
    return;
  }
  stopWatch = new AbortController();
  errorBox.textContent = "";
  void watch(watchPrefix.value, stopWatch);
});

// ---- cluster: status of this member and the member list --------------------

const statusList = el<HTMLDListElement>("status");
const memberRows = el<HTMLTableSectionElement>("members");

const hex = (id: bigint): string => id.toString(16);

async function refreshCluster(): Promise<void> {
  const [status, members] = await Promise.all([api.status(), api.members()]);
  const h = status.header;
  const facts: [string, string][] = [
    ["cluster ID", hex(h?.clusterId ?? 0n)],
    ["member ID", hex(h?.memberId ?? 0n)],
    ["leader", hex(status.leader)],
    ["version", status.version],
    ["revision", String(h?.revision ?? 0n)],
    ["raft term", String(status.raftTerm)],
    ["raft index", `${status.raftIndex} (applied ${status.raftAppliedIndex})`],
    ["db size", `${status.dbSize} bytes (${status.dbSizeInUse} in use)`],
    ["learner", String(status.isLearner)],
  ];
  if (status.errors.length > 0) facts.push(["errors", status.errors.join("; ")]);
  statusList.replaceChildren(
    ...facts.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }),
  );
  memberRows.replaceChildren(
    ...members.map((m) => {
      const row = document.createElement("tr");
      row.append(
        td(hex(m.ID)),
        td(m.name),
        td(m.peerURLs.join(", ")),
        td(m.clientURLs.join(", ")),
        td(m.isLearner ? "learner" : m.ID === status.leader ? "leader" : "voter"),
      );
      return row;
    }),
  );
}

el<HTMLButtonElement>("cluster-refresh").addEventListener("click", () => run(refreshCluster));

// ---- login: etcd's auth ------------------------------------------------------

const loginForm = el<HTMLFormElement>("login-form");
const loginUser = el<HTMLInputElement>("login-user");
const loginPassword = el<HTMLInputElement>("login-password");
const session = el<HTMLSpanElement>("session");

function showSession(): void {
  const user = api.user;
  loginForm.hidden = user !== undefined;
  session.hidden = user === undefined;
  el<HTMLSpanElement>("session-user").textContent = user ? `logged in as ${user}` : "";
}

/** reload shows the panels again as the current user (or as nobody) sees them. */
async function reload(): Promise<void> {
  await Promise.all([list(), refreshCluster()]);
}

loginForm.addEventListener("submit", (e) => {
  e.preventDefault();
  void run(async () => {
    await api.login(loginUser.value, loginPassword.value);
    // The password lives on in Concord's memory only (to authenticate again), not in the page.
    loginPassword.value = "";
    showSession();
    await reload();
  });
});

el<HTMLButtonElement>("logout").addEventListener("click", () => {
  stopWatch?.abort();
  watchEvents.replaceChildren();
  api.logout();
  showSession();
  listRows.replaceChildren();
  listSummary.textContent = "";
  listMore.hidden = true;
  nextPage = undefined;
  editValue.value = "";
  editResult.textContent = "";
  errorBox.textContent = "";
  header.classList.remove("login-needed");
});

el<HTMLSpanElement>("endpoint").textContent = window.location.host;
showSession();
void run(reload);
