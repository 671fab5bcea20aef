// Loads UI-format workflows into the real ComfyUI front end (headless Chromium) and prints, as JSON,
// the API prompt the front end itself would submit for each (app.graphToPrompt), plus page errors.
// usage: node frontend_prompt.js CHROMIUM_PATH COMFYUI_URL WORKFLOW.json [...]
const { chromium } = require('playwright-core');
const fs = require('fs');

(async () => {
  const [executablePath, url, ...workflows] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    const errors = [];
    page.on('pageerror', (error) => errors.push(String(error)));
    await page.goto(url, { waitUntil: 'load', timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    const prompts = {};
    await page.waitForTimeout(2000);  // let the front end finish its own start-up loads (a default workflow)
    for (const file of workflows) {
      const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
      // load until the graph holds this workflow's nodes: a late start-up load can replace the first one
      for (let attempt = 0; attempt < 5; attempt++) {
        await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
        await page.waitForTimeout(500);
        const count = await page.evaluate(() => window.app.graph._nodes.length);
        if (count === workflow.nodes.length) break;
      }
      prompts[file] = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    }
    console.log(JSON.stringify({ errors, prompts }));
  } finally {
    await browser.close();
  }
})().catch((error) => { console.error(error); process.exit(1); });
