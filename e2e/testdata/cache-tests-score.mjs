// Scores a results file of the HTTP cache test suite (cache-tests.fyi)
// as a reverse proxy cache: the tests that run only on browsers or only
// on CDNs are left out, and a test passes when its result is true. This
// gives the published implementations the scores docs/cache.md lists.
// Run from the suite's folder:
//   node score.mjs results.json [more.json ...]
// prints one JSON line per file: {"file", "required", "requiredTotal",
// "optimal", "optimalTotal", "failed": [required failures]}.
import fs from 'fs'
import path from 'path'
import process from 'process'
import { pathToFileURL } from 'url'

const suite = process.cwd()
const tests = (await import(pathToFileURL(path.join(suite, 'tests/index.mjs')))).default

for (const file of process.argv.slice(2)) {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  const score = { file, required: 0, requiredTotal: 0, optimal: 0, optimalTotal: 0, failed: [], optimalFailed: [] }
  for (const s of tests) {
    for (const t of s.tests) {
      const kind = t.kind || 'required'
      if ((kind !== 'required' && kind !== 'optimal') || t.browser_only || t.cdn_only) continue
      const pass = results[t.id] === true
      score[kind + 'Total']++
      if (pass) score[kind]++
      else if (kind === 'required') score.failed.push(t.id)
      else score.optimalFailed.push(t.id)
    }
  }
  console.log(JSON.stringify(score))
}
