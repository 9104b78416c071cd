// Drives the web console in a real Chromium (playwright-core, Debian's
// /usr/bin/chromium) for tests/e2e TestWebConsole, which starts concord and
// talks with this script over stdio:
//
//   script -> test  "step listed KEY"   KEY was put through the console and listed
//   test -> script  "put KEY VALUE"     the test has put KEY=VALUE with etcdctl
//   script -> test  "step watched KEY"  the console's watch showed that put
//   script -> test  "step deleted KEY"  KEY was deleted through the console
//   script -> test  "done"
//
// Environment: PREFIX (the keys' prefix; PREFIX+"page/1..3" exist before
// the script starts), and browser.mjs's.
//
// Any failure, uncaught page error or console error exits non-zero with the
// reason on stderr.

import { drive, env, expectText, nextLine, say } from "./browser.mjs";

const prefix = env("PREFIX");

await drive(async (page, noProblems) => {
  const byTest = (id) => page.getByTestId(id);
  const row = (key) => byTest("list-rows").locator(`tr[data-key="${key}"]`);
  const event = (type, key) => byTest("watch-events").locator(`li.${type}[data-key="${key}"]`);

  // The page loads the cluster panel on its own: this member and its list.
  await expectText(byTest("status"), "member ID");
  await byTest("members").locator("tr").first().waitFor();

  // Paginated listing: 3 keys, 2 a page.
  await byTest("list-prefix").fill(prefix + "page/");
  await page.locator("#list-limit").fill("2");
  await byTest("list").click();
  await expectText(byTest("list-summary"), "2 of 3 keys");
  await byTest("list-more").click();
  await expectText(byTest("list-summary"), "3 of 3 keys");
  await row(prefix + "page/3").waitFor();
  if (await byTest("list-more").isVisible()) throw new Error("a next page after the last one");

  // A live watch on the prefix, then a put through the console.
  await byTest("watch-prefix").fill(prefix);
  await byTest("watch-toggle").click();
  await page.locator('[data-testid="watch-state"][data-state="watching"]').waitFor();

  const mine = prefix + "from-browser";
  await byTest("edit-key").fill(mine);
  await byTest("edit-value").fill("hello from chromium");
  await byTest("put").click();
  await expectText(byTest("edit-result"), `put ${mine} at revision`);
  await byTest("list-prefix").fill(prefix);
  await page.locator("#list-limit").fill("50");
  await byTest("list").click();
  await expectText(row(mine).locator("td.value"), "hello from chromium");
  await expectText(event("PUT", mine), "hello from chromium");
  noProblems();
  say(`step listed ${mine}`);

  // A put by someone else (etcdctl) shows up in the watch.
  const [verb, key, ...value] = (await nextLine()).split(" ");
  if (verb !== "put") throw new Error(`unexpected request from the test: ${verb}`);
  await expectText(event("PUT", key), `${key} = ${value.join(" ")}`);
  say(`step watched ${key}`);

  // Delete through the console: gone from the list, a DELETE event.
  await byTest("edit-key").fill(mine);
  await byTest("delete").click();
  await expectText(byTest("edit-result"), `deleted ${mine}`);
  await row(mine).waitFor({ state: "detached" });
  await event("DELETE", mine).waitFor();
  noProblems();
  say(`step deleted ${mine}`);
});
