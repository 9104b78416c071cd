// etcd's API as the console uses it: Connect-Web clients for etcd's KV,
// Cluster and Maintenance services and concord's browser watch, plus the byte
// and range helpers etcdctl applies to keys (prefix ranges, pagination).
//
// Every call goes to the origin that served the console: the gateway serves
// the console and the RPCs on the same port, so no CORS is involved.
//
// Once auth is enabled, every call carries the token of the logged-in user
// in the "token" header (what clientv3 sends as gRPC metadata). The user's
// name and password stay in this object's memory only, never in storage, so
// that an expired or outdated token can be replaced as clientv3 replaces it:
// authenticate again once and repeat the call.

import { ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import {
  Auth,
  Cluster,
  KV,
  Maintenance,
  type Member,
  type StatusResponse,
  type WatchResponse,
} from "./gen/rpc_pb";
import { WatchService } from "./gen/concord/v1/watch_pb";
import type { KeyValue } from "./gen/etcd/api/mvccpb/kv_pb";

export type { KeyValue, Member, StatusResponse, WatchResponse };
export { Event_EventType as EventType } from "./gen/etcd/api/mvccpb/kv_pb";

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/** bytes turns a key or value typed by the user into etcd's bytes (UTF-8). */
export function bytes(s: string): Uint8Array {
  return encoder.encode(s);
}

/**
 * text shows stored bytes: as UTF-8 when they are, otherwise as hex with a
 * marker, so binary values never render as replacement characters.
 */
export function text(b: Uint8Array): string {
  try {
    return strictDecoder.decode(b);
  } catch {
    return "0x" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
}

/**
 * prefixEnd is etcd's range end for "every key starting with prefix"
 * (clientv3.GetPrefixRangeEnd): the prefix with its last byte below 0xff
 * incremented and the rest cut; a prefix of only 0xff bytes, or an empty one,
 * has no upper bound, which etcd spells as the single byte 0.
 */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i] < 0xff) {
      const end = prefix.slice(0, i + 1);
      end[i]++;
      return end;
    }
  }
  return new Uint8Array([0]);
}

/** after is the smallest key greater than key (key + "\0"), where the next page starts. */
function after(key: Uint8Array): Uint8Array {
  const next = new Uint8Array(key.length + 1);
  next.set(key);
  return next;
}

/** Page is one page of a prefix listing. */
export interface Page {
  kvs: KeyValue[];
  /** count is the number of keys under the prefix at revision (all pages). */
  count: bigint;
  /** revision is the store revision every page of the listing is read at. */
  revision: bigint;
  /** next continues the listing, or is undefined on the last page. */
  next?: () => Promise<Page>;
}

/** etcd's messages (rpctypes) for a call without a usable token. */
const userEmpty = "etcdserver: user name is empty";
const invalidToken = "etcdserver: invalid auth token";
const oldRevision = "etcdserver: revision of auth store is old";

/** grpcStatus is how a watch's cancel reason spells a gRPC status before etcd's message. */
const grpcStatus = /^rpc error: code = \w+ desc = /;

/**
 * needsLogin reports whether err (a call's error or a watch's cancel reason)
 * is etcd refusing a call for its missing or stale token: the page then
 * asks the user to log in.
 */
export function needsLogin(err: unknown): boolean {
  const message = typeof err === "string" ? err.replace(grpcStatus, "") : ConnectError.from(err).rawMessage;
  return message === userEmpty || message === invalidToken || message === oldRevision;
}

interface Credentials {
  name: string;
  password: string;
}

/** Concord is the console's view of one concord (or etcd gateway) endpoint. */
export class Concord {
  readonly kv: Client<typeof KV>;
  readonly cluster: Client<typeof Cluster>;
  readonly maintenance: Client<typeof Maintenance>;
  readonly watcher: Client<typeof WatchService>;
  private readonly auth: Client<typeof Auth>;

  private credentials?: Credentials;
  private token?: string;
  /** refreshing is the Authenticate in flight, shared by the calls that need its token. */
  private refreshing?: Promise<void>;

  constructor(baseUrl: string) {
    // Binary protobuf: the server decodes it with less work than JSON, and
    // keys and values are bytes anyway.
    const withToken: Interceptor = (next) => async (req) => {
      const sent = this.token;
      if (sent) req.header.set("token", sent);
      if (req.stream) return next(req); // a stream's request cannot be sent twice (watch retries itself)
      try {
        return await next(req);
      } catch (err) {
        if (!(await this.refreshAfter(err, sent))) throw err;
        if (this.token) req.header.set("token", this.token);
        return next(req);
      }
    };
    const transport = createConnectTransport({ baseUrl, useBinaryFormat: true, interceptors: [withToken] });
    // Authenticate never carries a token: a stale one must not stand in the way of a new one.
    this.auth = createClient(Auth, createConnectTransport({ baseUrl, useBinaryFormat: true }));
    this.kv = createClient(KV, transport);
    this.cluster = createClient(Cluster, transport);
    this.maintenance = createClient(Maintenance, transport);
    this.watcher = createClient(WatchService, transport);
  }

  /** user is the logged-in user's name, or undefined. */
  get user(): string | undefined {
    return this.credentials?.name;
  }

  /**
   * login authenticates as name and, when etcd accepts, sends the token with
   * every later call and keeps the credentials to authenticate again.
   */
  async login(name: string, password: string): Promise<void> {
    const resp = await this.auth.authenticate({ name, password });
    this.credentials = { name, password };
    this.token = resp.token;
  }

  /** logout forgets the token and the credentials: later calls go without a token. */
  logout(): void {
    this.credentials = undefined;
    this.token = undefined;
    this.refreshing = undefined;
  }

  /**
   * refreshAfter authenticates again with the kept credentials when a call
   * sent with token sent failed for its token (clientv3's
   * shouldRefreshToken), and reports whether the call is worth repeating.
   * Calls that fail together share one Authenticate; a call that was sent
   * before a newer token arrived only repeats with it.
   */
  private async refreshAfter(err: unknown, sent: string | undefined): Promise<boolean> {
    const creds = this.credentials;
    if (!creds || !needsLogin(err)) return false;
    if (this.token !== sent) return true;
    if (!this.refreshing) {
      this.refreshing = this.auth
        .authenticate({ name: creds.name, password: creds.password })
        .then((resp) => {
          if (this.credentials === creds) this.token = resp.token;
        })
        .finally(() => {
          this.refreshing = undefined;
        });
    }
    await this.refreshing;
    return this.credentials === creds;
  }

  /**
   * list reads the keys under prefix, limit at a time, in key order. Every
   * page is read at the revision of the first, as `etcdctl get --prefix` with
   * pagination does, so keys written meanwhile do not shift the pages.
   */
  async list(prefix: string, limit: number): Promise<Page> {
    const key = prefix === "" ? new Uint8Array([0]) : bytes(prefix);
    return this.page(key, prefixEnd(bytes(prefix)), BigInt(limit));
  }

  /**
   * page reads the page starting at key. The first page (no first) sets the
   * revision, and the count: etcd counts the keys from the requested start
   * on, so a later page's count covers only the rest of the listing.
   */
  private async page(key: Uint8Array, rangeEnd: Uint8Array, limit: bigint, first?: Page): Promise<Page> {
    const resp = await this.kv.range({ key, rangeEnd, limit, revision: first?.revision ?? 0n });
    const page: Page = {
      kvs: resp.kvs,
      count: first?.count ?? resp.count,
      revision: first?.revision ?? resp.header?.revision ?? 0n,
    };
    if (resp.more && resp.kvs.length > 0) {
      const last = resp.kvs[resp.kvs.length - 1].key;
      page.next = () => this.page(after(last), rangeEnd, limit, page);
    }
    return page;
  }

  /** get returns the key's current value, or undefined when it does not exist. */
  async get(key: string): Promise<KeyValue | undefined> {
    const resp = await this.kv.range({ key: bytes(key) });
    return resp.kvs[0];
  }

  /** put writes key=value and returns the revision of the write. */
  async put(key: string, value: string): Promise<bigint> {
    const resp = await this.kv.put({ key: bytes(key), value: bytes(value) });
    return resp.header?.revision ?? 0n;
  }

  /** del deletes key and returns how many keys were deleted (0 or 1). */
  async del(key: string): Promise<bigint> {
    const resp = await this.kv.deleteRange({ key: bytes(key) });
    return resp.deleted;
  }

  /**
   * watch streams the events under prefix, from now on, until signal aborts
   * it; prevKv asks for each event's previous value.
   */
  async *watch(prefix: string, signal: AbortSignal): AsyncIterable<WatchResponse> {
    const key = prefix === "" ? new Uint8Array([0]) : bytes(prefix);
    const req = { key, rangeEnd: prefixEnd(bytes(prefix)), prevKv: true };
    // A watch refused for its token is created and canceled in its first
    // response; it is tried once more after authenticating again.
    for (let attempt = 0; ; attempt++) {
      const sent = this.token;
      let retry = false;
      for await (const resp of this.watcher.watch(req, { signal })) {
        if (attempt === 0 && resp.created && resp.canceled && (await this.refreshAfter(resp.cancelReason, sent))) {
          retry = true;
          break;
        }
        yield resp;
      }
      if (!retry) return;
    }
  }

  /** status is Maintenance.Status of the member that serves the console. */
  status(): Promise<StatusResponse> {
    return this.maintenance.status({});
  }

  /** members lists the cluster's members, linearizably. */
  async members(): Promise<Member[]> {
    const resp = await this.cluster.memberList({ linearizable: true });
    return resp.members;
  }
}
