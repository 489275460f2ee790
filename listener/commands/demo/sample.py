"""The demo's sample data: a campaign with a follow-up step, plausible Brazilian leads (one of
them opted out), one message per lead (a few with their text given, so they skip the LLM), and
the statement that inserts them."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from listener.commands.oneshot import Connection, one
from listener.queries import q

#: The demo's follow-up: step 2 goes this long after step 1 to leads who did not stop it.
DEMO_STEP_WAIT = timedelta(seconds=3)
DEMO_STEP_PROMPT = (
    "Escreva um follow-up curto e gentil para o lead que ainda não respondeu, retomando a "
    "mensagem anterior sem se apresentar de novo."
)

DEMO_PROMPT = (
    "Você é um SDR simpático de uma agência de marketing digital. Escreva uma primeira mensagem "
    "de WhatsApp curta e pessoal para o lead, citando a empresa e a cidade dele, e convide para "
    "uma conversa rápida de 15 minutos. Sem emojis em excesso e sem parecer spam."
)

_FIRST_NAMES = (
    "Ana", "Bruno", "Camila", "Diego", "Eduarda", "Felipe", "Gabriela", "Henrique", "Isabela",
    "João", "Juliana", "Lucas", "Mariana", "Matheus", "Natália", "Pedro", "Rafaela", "Rodrigo",
    "Sofia", "Thiago", "Vanessa", "Vinícius", "Larissa", "Gustavo", "Beatriz", "Carlos",
)  # fmt: skip
_SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Barbosa", "Rocha",
)  # fmt: skip
#: City and its area code (DDD), so the sample phones look right.
_CITIES = (
    ("São Paulo", "11"), ("Campinas", "19"), ("Rio de Janeiro", "21"), ("Belo Horizonte", "31"),
    ("Curitiba", "41"), ("Porto Alegre", "51"), ("Brasília", "61"), ("Salvador", "71"),
    ("Recife", "81"), ("Fortaleza", "85"), ("Florianópolis", "48"), ("Goiânia", "62"),
)  # fmt: skip
#: Segment and company names in it.
_COMPANIES = (
    ("padaria", ("Padaria Pão Dourado", "Panificadora Trigo Bom", "Padaria Estrela")),
    ("clínica odontológica", ("Sorriso Pleno Odontologia", "OdontoVida", "Clínica Dente Feliz")),
    ("academia", ("Academia Corpo em Forma", "Studio Movimento", "Fit Center")),
    ("imobiliária", ("Imobiliária Casa Nova", "Lar Ideal Imóveis", "Chave de Ouro Imóveis")),
    ("contabilidade", ("Contábil Exata", "Escritório Balanço Certo", "Conta Fácil")),
    ("pet shop", ("Pet Feliz", "Mundo Animal", "Cão & Cia")),
    ("restaurante", ("Restaurante Sabor da Terra", "Cantina Nonna Rosa", "Bistrô do Porto")),
    ("oficina mecânica", ("Auto Center Pistão", "Oficina Roda Viva", "Mecânica Confiança")),
)  # fmt: skip
_NOTES = (
    "Pediu orçamento de site pelo formulário.",
    "Seguidor ativo no Instagram; curtiu posts sobre anúncios.",
    "Baixou o e-book de marketing local.",
    "Indicado por um cliente atual.",
    "Visitou a página de preços duas vezes.",
    None,
)
#: Messages inserted with `content`: sent as they are, without the LLM.
_CONTENTS = (
    "Oi! Aqui é a Carol, da Agência Norte. Separei três ideias para trazer mais clientes "
    "para a sua empresa pelo Google. Posso te mandar?",
    "Olá! Vi que vocês abriram uma nova unidade, parabéns! Temos um pacote de lançamento "
    "com anúncios locais. Topa uma conversa de 15 minutos esta semana?",
)


def sample_leads(count: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """`count` plausible Brazilian leads; the second one opted out (its message is skipped)."""
    rng = rng or random.Random()
    leads = []
    for index in range(count):
        city, ddd = rng.choice(_CITIES)
        segment, companies = rng.choice(_COMPANIES)
        leads.append(
            {
                "id": uuid.uuid4(),
                "name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}",
                "phone": f"55{ddd} 9{rng.randrange(10_000):04d} {rng.randrange(10_000):04d}",
                "company": rng.choice(companies),
                "city": city,
                "segment": segment,
                "notes": rng.choice(_NOTES),
                "opted_out": index == 1,
            }
        )
    return leads


async def create_sample(conn: Connection, leads: list[dict[str, Any]]) -> tuple[UUID, UUID]:
    """Insert the campaign, its run, the leads and one message per lead (one statement)."""
    name = f"Demo {datetime.now().astimezone():%Y-%m-%d %H:%M:%S}"
    campaign_id: UUID = (await one(conn, "demo_campaign", {"name": name, "prompt": DEMO_PROMPT}))[
        "id"
    ]
    await conn.execute(
        q("demo_step"),
        {"campaign_id": campaign_id, "wait": DEMO_STEP_WAIT, "prompt": DEMO_STEP_PROMPT},
    )
    run_id: UUID = (await one(conn, "demo_run", {"campaign_id": campaign_id}))["id"]
    columns = {
        "ids": "id", "names": "name", "phones": "phone", "companies": "company", "cities": "city",
        "segments": "segment", "notes": "notes", "opted_out": "opted_out",
    }  # fmt: skip
    await conn.execute(
        q("demo_leads"), {name: [lead[c] for lead in leads] for name, c in columns.items()}
    )
    contents: list[str | None] = [None] * len(leads)
    for offset, text in enumerate(_CONTENTS):
        index = 2 + offset * 5
        if index < len(leads):
            contents[index] = text
    await conn.execute(
        q("demo_messages"),
        {
            "campaign_id": campaign_id,
            "run_id": run_id,
            "lead_ids": [lead["id"] for lead in leads],
            "contents": contents,
        },
    )
    return campaign_id, run_id
