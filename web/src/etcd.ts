// etcd's API as the console uses it: Connect-Web clients for etcd's KV,
// Cluster and Maintenance services and concord's browser watch, plus the byte
// and range helpers etcdctl applies to keys (prefix ranges, pagination).
//
// Every call goes to the origin that served the console: the gateway serves
// the console and the RPCs on the same port, so no CORS is involved.

import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import {
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

/** Concord is the console's view of one concord (or etcd gateway) endpoint. */
export class Concord {
  readonly kv: Client<typeof KV>;
  readonly cluster: Client<typeof Cluster>;
  readonly maintenance: Client<typeof Maintenance>;
  readonly watcher: Client<typeof WatchService>;

  constructor(baseUrl: string) {
    // Binary protobuf: the server decodes it with less work than JSON, and
    // keys and values are bytes anyway.
    const transport = createConnectTransport({ baseUrl, useBinaryFormat: true });
    this.kv = createClient(KV, transport);
    this.cluster = createClient(Cluster, transport);
    this.maintenance = createClient(Maintenance, transport);
    this.watcher = createClient(WatchService, transport);
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
  watch(prefix: string, signal: AbortSignal): AsyncIterable<WatchResponse> {
    const key = prefix === "" ? new Uint8Array([0]) : bytes(prefix);
    return this.watcher.watch({ key, rangeEnd: prefixEnd(bytes(prefix)), prevKv: true }, { signal });
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
