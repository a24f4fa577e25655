// Bayeux channel globbing for the specs' reference server: `/a/*` matches one
// more segment, `/a/**` any number (at least one).
export function channelMatches(pattern, channel) {
  if (pattern === channel) return true;
  const want = pattern.split('/');
  const last = want.pop();
  const have = channel.split('/');
  if (last === '*' && have.length !== want.length + 1) return false;
  if (last === '**' && have.length <= want.length) return false;
  if (last !== '*' && last !== '**') return false;
  return want.every((segment, i) => segment === have[i]);
}
