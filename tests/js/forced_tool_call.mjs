// A forced tool call at max_tokens 30, streamed through openai-node, seeds 0-19 at temperature
// 0.8: prints one JSON line per seed, {seed, finish_reason, name, arguments}.
// Usage: node forced_tool_call.mjs BASE_URL PARAMETERS_JSON
import OpenAI from "openai";

const [base, parametersJson] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "none", maxRetries: 0 });
const tools = [
  {
    type: "function",
    function: { name: "read_logs", description: "Read a log", parameters: JSON.parse(parametersJson) },
  },
];

async function call(seed) {
  const stream = await client.chat.completions.create({
    model: "gemma",
    messages: [{ role: "user", content: "Show the last nginx log lines on web-01." }],
    tools,
    tool_choice: "required",
    max_tokens: 30,
    temperature: 0.8,
    seed,
    stream: true,
  });
  let name = null;
  let args = "";
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const delta of choice.delta.tool_calls ?? []) {
        name = delta.function?.name ?? name;
        args += delta.function?.arguments ?? "";
      }
      finish = choice.finish_reason ?? finish;
    }
  }
  return { seed, finish_reason: finish, name, arguments: args };
}

const seeds = Array.from({ length: 20 }, (_, i) => i);
for (let i = 0; i < seeds.length; i += 4) {
  const answers = await Promise.all(seeds.slice(i, i + 4).map(call));
  for (const answer of answers) console.log(JSON.stringify(answer));
}
