// The browser assets are served by Sprockets as they are, to old browsers
// too: each must parse as ES5 and keep to one function-wrapped file that
// only adds to `window`. backbone_sync.js, built from them by `rake
// js:build`, is ES5 too; backbone_sync.esm.js is their ES module.
//
//   node --test spec/javascripts/backbone/es5.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { ROOT } from './support/backbone_env.mjs';

const acorn = createRequire(import.meta.url)('acorn');
const ASSETS = path.join(ROOT, 'vendor/assets/javascripts');
const FILES = [
  'backbone_sync.js',
  'backbone_sync/faye.js',
  'backbone_sync/config.js',
  'backbone_sync/sync.js',
  'backbone_sync/client.js',
  'backbone_sync/changes.js',
  'backbone_sync/subscription.js',
  'backbone_sync/core.js',
  'backbone_sync/pushable.js',
  'backbone_sync-rails/rails_faye_subscriber.js',
  'extensions/backbone.collection.idempotent.js',
];

for (const file of FILES) {
  test(`${file} is ES5 and one IIFE`, () => {
    const source = fs.readFileSync(path.join(ASSETS, file), 'utf8');
    let ast;
    assert.doesNotThrow(() => { ast = acorn.parse(source, { ecmaVersion: 5, sourceType: 'script' }); },
      `${file} must parse as ES5 (no arrow functions, let/const, classes, template literals)`);
    const statements = ast.body.filter((node) => node.type !== 'EmptyStatement');
    if (file === 'backbone_sync.js') {
      assert.equal(statements.length, FILES.length - 1, 'one IIFE per source file');
      assert.doesNotMatch(source, /^\/\/= /m, 'no Sprockets directive: Propshaft serves it as it is');
      return;
    }
    assert.equal(statements.length, 1, 'one top-level statement');
    const call = statements[0].expression;
    assert.equal(call?.type, 'CallExpression');
    assert.equal(call.callee.type, 'FunctionExpression');
  });
}

test('backbone_sync.esm.js is an ES module', () => {
  const source = fs.readFileSync(path.join(ASSETS, 'backbone_sync.esm.js'), 'utf8');
  const ast = acorn.parse(source, { ecmaVersion: 2015, sourceType: 'module' });
  const imports = ast.body.filter((node) => node.type === 'ImportDeclaration').map((node) => node.source.value);
  assert.deepEqual(imports, ['backbone', 'underscore']);
});

test('each file requires what it uses', () => {
  const directives = (file) => fs.readFileSync(path.join(ASSETS, file), 'utf8')
    .split('\n').map((line) => /^\/\/= require (\S+)/.exec(line)).filter(Boolean).map((m) => m[1]);
  for (const [file, needs] of [
    ['backbone_sync/config.js', []],
    ['backbone_sync/sync.js', ['backbone_sync/config']],
    ['backbone_sync/client.js', ['backbone_sync/config']],
    ['backbone_sync/changes.js', ['backbone_sync/sync']],
    ['backbone_sync/subscription.js', ['backbone_sync/client', 'backbone_sync/changes']],
    ['backbone_sync/core.js', ['backbone_sync/config', 'backbone_sync/sync', 'backbone_sync/client',
      'backbone_sync/changes', 'backbone_sync/subscription']],
    ['extensions/backbone.collection.idempotent.js', ['backbone_sync/core']],
    ['backbone_sync-rails/rails_faye_subscriber.js', ['backbone_sync/core', 'extensions/backbone.collection.idempotent']],
    ['backbone_sync/pushable.js', ['backbone_sync/core', 'extensions/backbone.collection.idempotent']],
  ]) {
    assert.deepEqual(directives(file), needs, file);
    for (const required of needs) assert.ok(fs.existsSync(path.join(ASSETS, `${required}.js`)), required);
  }
});
