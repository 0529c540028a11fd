"""The currencies a transaction may be in: the circulating currencies of ISO 4217 (list as of 2026).

Left out on purpose, because no card or account transaction is denominated in them: fund codes (BOV, CHE, CHW,
CLF, COU, MXV, USN, UYI, UYW), the X-codes for precious metals, SDRs, testing and "no currency" (XAU, XDR,
XTS, XXX, ...), and withdrawn codes (ANG replaced by XCG in 2025, BGN by EUR in 2026, HRK by EUR in 2023, SLL
by SLE, ZWL by ZWG).
"""

from __future__ import annotations

_CODES = """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF
    CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD
    HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP
    PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
"""
ISO_4217_CURRENCIES: frozenset[str] = frozenset(_CODES.split())
