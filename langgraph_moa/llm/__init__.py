"""How one agent is called: the chat-model factory (OpenAI-compatible services and the embedded
model), the openai client with whole-request timeouts and tuned retries, and the embedded
llama.cpp model with its runtime check. No LangGraph here.

No names here: the package's own, used by the graph's steps and the doors."""
