// Drives the console's Messages view in a real headless Chromium: a viewer who is not
// logged in sees no Redrive (and the API refuses one), an operator whose session is gone
// cannot redrive, and a logged-in operator reads each backend's outbox and barrier
// figures and the DEAD messages, then redrives one.
//
// Started by tests/tests/t81_console_messages.rs, which made the messages through a real
// proxy, MariaDB and RabbitMQ and checks the broker, the database and the audit API
// afterwards. Input: the JSON in REWIND_CONSOLE (see the `plan` there). Output: a
// screenshot in its `artifacts` folder and one JSON line on stdout; any failed
// expectation throws, so the exit code is non-zero.

import { join } from "node:path";

import { expect, launch, login, newPage, plan, rowByHeader, until } from "./common.mjs";

const resourceRow = (page) => page.locator(`tr.outbox-row[data-resource="${plan.resource}"]`);
const deadRow = (page, id) =>
  page.locator(`tr.dead-row[data-resource="${plan.resource}"][data-message-id="${id}"]`);

/// What the POST a viewer's page could send answers, without the console's help.
async function redriveByHand(page, id) {
  return page.evaluate(async ([resource, id]) => {
    const res = await fetch(`/api/v1/outbox/${encodeURIComponent(resource)}/messages/${encodeURIComponent(id)}/redrive`, {
      method: "POST",
      headers: { "X-CSRF-Token": "guessed" },
      credentials: "same-origin",
    });
    return res.status;
  }, [plan.resource, id]);
}

async function main() {
  const browser = await launch();
  const errors = [];
  const report = {};
  try {
    // 1. A viewer who never logged in: the login form, no Messages view, no Redrive
    //    button anywhere; a hand-made redrive is refused (401).
    {
      const { ctx, page } = await newPage(browser, errors);
      await page.goto(plan.url);
      await page.getByTestId("login-submit").waitFor({ state: "visible" });
      expect(await page.locator("#nav").isHidden(), "viewer: no navigation before login");
      expect(await page.locator("#view-messages").isHidden(), "viewer: the Messages view is hidden");
      const visible = await page.locator("button.redrive").evaluateAll((bs) =>
        bs.filter((b) => b.offsetParent !== null).length);
      expect(visible === 0, `viewer: ${visible} Redrive button(s) visible`);
      report.viewer_post = await redriveByHand(page, plan.dead[1]);
      expect(report.viewer_post === 401, "viewer: a hand-made redrive answers " + report.viewer_post);
      await ctx.close();
    }

    // 2. An operator whose session is gone (cookie cleared, page still open): Redrive
    //    does not work, the console goes back to the login form.
    {
      const { ctx, page } = await newPage(browser, errors);
      await login(page);
      await page.getByTestId("nav-messages").click();
      const row = deadRow(page, plan.dead[1]);
      await row.waitFor();
      await ctx.clearCookies();
      await row.getByTestId("redrive").click();
      await page.getByTestId("login-submit").waitFor({ state: "visible" });
      expect(await page.locator("#view-messages").isHidden(), "expired: the Messages view is hidden again");
      report.expired_post = await redriveByHand(page, plan.dead[1]);
      expect(report.expired_post === 401, "expired: a hand-made redrive answers " + report.expired_post);
      await ctx.close();
    }

    // 3. The operator reads the Messages view.
    const { page } = await newPage(browser, errors);
    await login(page);
    await page.getByTestId("nav-messages").click();
    await page.locator("#view-messages").waitFor({ state: "visible" });
    const row = resourceRow(page);
    await row.waitFor();
    const figures = await until(page, "the resource row: DEAD 2, 1 duplicate refused, 3 published",
      () => rowByHeader(page, "outbox-table", row),
      (r) => r["DEAD"] === "2" && r["Duplicates refused"] === "1" && r["Published"] === "3");
    report.before = figures;
    expect(figures["Broker"] === plan.broker, `broker shown ${figures["Broker"]}, want ${plan.broker}`);
    expect(figures["Barrier rows"] === "1", "one barrier row: " + figures["Barrier rows"]);
    expect(figures["Resource"].startsWith(plan.resource), "resource cell: " + figures["Resource"]);
    const all = await page.locator("#messages").textContent();
    expect(!all.includes(plan.broker_password_part), "the broker password is nowhere on the page");
    expect(await page.locator("tr.dead-row").count() === 2, "two DEAD rows");
    for (const id of plan.dead) {
      const r = await rowByHeader(page, "dead-table", deadRow(page, id));
      expect(r["Topic"] === plan.dead_topic, `dead ${id}: topic ${r["Topic"]}`);
      expect(r["Message id"] === id, `dead ${id}: id cell ${r["Message id"]}`);
      expect(r["Attempts"] === "2", `dead ${id}: attempts ${r["Attempts"]}`);
      expect(r["Last error"] !== "", `dead ${id}: a last error`);
    }

    // 4. Redrive one (the Rust side bound a queue to its topic first).
    const [chosen, kept] = plan.dead;
    await deadRow(page, chosen).getByTestId("redrive").click();
    const logged = page.locator(`#redrive-log li[data-message-id="${chosen}"]`);
    await logged.waitFor();
    report.log = await logged.textContent();
    expect(/Redriven/.test(report.log), "redrive log: " + report.log);
    expect(await logged.evaluate((li) => li.classList.contains("result-ok")), "redrive log entry is a success");
    // A refused redrive's inline result would stay on the row; this one's row is gone.
    await deadRow(page, chosen).waitFor({ state: "detached" });
    const inline = await page.locator(".redrive-result").allTextContents();
    expect(inline.every((t) => /Redriven/.test(t)), "no failure shown inline: " + JSON.stringify(inline));
    expect(await page.locator("tr.dead-row").count() === 1, "one DEAD row left");
    await deadRow(page, kept).waitFor();
    report.after = await until(page, "the resource row: DEAD 1, 4 published",
      () => rowByHeader(page, "outbox-table", row),
      (r) => r["DEAD"] === "1" && r["Published"] === "4");
    const b = page.locator("#banner");
    expect(await b.isHidden(), "no error banner: " + (await b.textContent()));
    await page.screenshot({ path: join(plan.artifacts, "messages.png"), fullPage: true });

    expect(errors.length === 0, "no script errors: " + errors.join("; "));
    report.ok = true;
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
