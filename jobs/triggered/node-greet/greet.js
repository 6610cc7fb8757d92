// An on-demand triggered job in Node: run it with arguments,
//   webjobs run node-greet -- "Ada Lovelace" Grace
// Each argument arrives in process.argv, and all of them in WEBJOBS_COMMAND_ARGUMENTS.
const names = process.argv.slice(2);
if (names.length === 0) {
  console.error("no names given; try: webjobs run node-greet -- Ada Grace");
  process.exit(2);
}
for (const name of names) {
  console.log(`hello, ${name}!`);
}
console.log(`(WEBJOBS_COMMAND_ARGUMENTS=${process.env.WEBJOBS_COMMAND_ARGUMENTS})`);
