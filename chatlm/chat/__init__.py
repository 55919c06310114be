"""The chat: a user's conversations, one turn of question and answer, the prompt it is asked with,
the knowledge texts it reads, and each user's fair share of the model."""
